"""Run configurations (ml-collections). `base.py` holds every field and its default; each preset
here starts from `base.get_config()` and changes a few fields.

Use by file path, `--config=configs/maze_scratch.py`, or by name, `--config=maze_scratch`
(`wmact_jax.main` puts the repository root on `sys.path`, so `from configs import base` works in
a config file loaded from anywhere). Presets:
  default            `make run`: the small CPU setting of base.py (Sokoban 6x6, 1 box, WMAct).
  <env>_scratch      a small model trained from scratch with a supervised warm start (CPU-sized).
  <env>_smollm2      SmolLM2-135M-Instruct (pretrained), the paper's batch of 256 episodes and
                     turn budget; meant for a GPU/TPU (on these 2 CPU cores it samples ~700 tok/s).
with <env> in sokoban, maze, taxi.
"""

PRESETS = ("default", "sokoban_scratch", "sokoban_smollm2", "maze_scratch", "maze_smollm2",
           "taxi_scratch", "taxi_smollm2")
