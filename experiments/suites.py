"""What the experiment suites train: environments, their transfer targets, methods, seeds, budgets.

Every run of an experiment starts from configs/default.py (the small model from scratch, compact
prompt), takes the experiment's environment settings, then the suite's budget, then the method.
Scaling to accelerators changes only these numbers (or `--set` overrides), not the runner.
"""

from __future__ import annotations

METHODS = ("entire_plan", "interactive", "rescale", "wmact", "step_penalty")

# Per environment: the env, where its skill should transfer, and the episode shape on 2 CPU cores.
# context_len holds the prompt and about l0 turns (a turn: <= max_turn_tokens + the feedback grid).
EXPERIMENTS = {
    "maze7": dict(env="Maze-7x7", transfer=("Maze-9x9", "Maze-11x11"), overrides={
        "rollout.context_len": 640, "rollout.max_actions": 24, "anneal.l0": 5}),
    "sokoban6": dict(env="Sokoban-6x6-1", transfer=(), overrides={
        "rollout.context_len": 640, "rollout.max_actions": 20, "anneal.l0": 5}),
    "sokoban_std": dict(env="Sokoban-Standard", transfer=("Sokoban-Hard-1", "Sokoban-Hard-2"), overrides={
        "rollout.context_len": 768, "rollout.max_actions": 30, "anneal.l0": 6}),
    "taxi": dict(env="Taxi-v3", transfer=("Taxi-7x7",), overrides={
        # Taxi's rendered map is ~370 tokens: fewer, longer turns.
        "rollout.context_len": 1664, "rollout.max_actions": 20, "anneal.l0": 3,
        "rollout.max_actions_per_turn": 6}),
}

# entire_plan writes the whole plan in one answer: room for max_actions actions (2 tokens each with
# the scratch tokenizer: the action and the separator) and the tags.
def entire_plan_overrides(max_actions: int) -> dict:
    return {"rollout.max_turn_tokens": 2 * max_actions + 12}


SUITES = {
    # One environment, few iterations: the whole pipeline in about 15 minutes on 2 CPU cores.
    "quick": dict(experiments=("maze7",), seeds=(0, 1, 2), overrides={
        "train.iterations": 8, "rollout.levels_per_iteration": 8, "rollout.group_size": 2,
        "ppo.minibatches": 2, "train.eval_levels": 32, "train.eval_every": 0,
        "train.eval_modes": ("greedy", "sampled", "single_turn"), "train.transcripts": 2,
        "train.checkpoint_every": 8, "anneal.tau": 2,
        "warmstart.steps": 200, "warmstart.batch_size": 16, "warmstart.num_levels": 600}),
    # Every environment: about 3 hours on 2 CPU cores.
    "full": dict(experiments=("maze7", "sokoban6", "sokoban_std", "taxi"), seeds=(0, 1, 2), overrides={
        "train.iterations": 40, "rollout.levels_per_iteration": 8, "rollout.group_size": 2,
        "ppo.minibatches": 2, "train.eval_levels": 48, "train.eval_every": 10,
        "train.eval_modes": ("greedy", "sampled", "single_turn"), "train.transcripts": 2,
        "train.checkpoint_every": 10, "anneal.tau": 5,
        "warmstart.steps": 400, "warmstart.batch_size": 16, "warmstart.num_levels": 1200}),
}

# The shared warm start: multi-turn demos plus this share of one-turn whole plans, so that one
# policy is a fair start for entire_plan and the interactive methods alike.
WARMSTART_SINGLE_TURN_FRACTION = 0.3
