"""Shared settings of the `<env>_smollm2` presets: SmolLM2-135M-Instruct, paper-sized batches.

Meant for a GPU/TPU. The paper's knowns are used where given (256 episodes per iteration, starting
turn cap 30, tau = 100); a pretrained instruct model gets a small warm start only to learn the
answer format, a much smaller learning rate than the scratch model, a longer context (chat
template + rules + several turns with thinking) and bfloat16 compute.
"""
from configs import base


def smollm2_config(env_name: str, max_actions: int):
    c = base.get_config()
    c.env.name = env_name
    c.model.source = "pretrained"
    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = "bfloat16"
    # Without these XLA plans 940 GB of activations for one PPO minibatch (32 x 4096 tokens), 58 GB with
    # remat, 46 GB with the logits in chunks too, 15.6 GB with the flash attention as well, 13.3 GB with the
    # MLP in chunks of 8192 positions (benchmarks/train_memory.py --smollm2: XLA:CPU's plan, 9.1 GB of which
    # is a float32 copy of the layers' saved bfloat16 inputs that CPU's bfloat16 handling makes; README
    # "Activation memory"). remat_attention plans as little for the attention (15.1 GB) for up to 2x its
    # FLOPs; flash_attention computes the causal triangle only (on CPU, the Taxi model's warm-start step:
    # 0.96-1.07x the time without remat, remat_attention's 1.0-2.3x; its PPO update 1.10x remat's).
    c.model.remat = True
    c.model.logits_chunk = 256
    c.model.flash_attention = True
    c.model.mlp_chunk = 8192
    c.rollout.levels_per_iteration = 64
    c.rollout.group_size = 4  # 256 episodes per iteration, as in the paper
    c.rollout.max_turn_tokens = 256
    c.rollout.context_len = 4096
    c.rollout.max_actions = max_actions
    c.anneal.l0 = 30
    c.anneal.tau = 100
    c.ppo.lr = 1e-6
    c.ppo.warmup_steps = 10
    c.ppo.minibatches = 8
    c.ppo.kl_coef = 0.001
    c.warmstart.enabled = True  # format only: short and gentle
    c.warmstart.steps = 100
    c.warmstart.batch_size = 16
    c.warmstart.lr = 1e-5
    c.train.iterations = 600
    c.train.eval_every = 50
    c.train.eval_levels = 256
    c.train.checkpoint_every = 25
    return c
