"""Shared settings of the `<env>_scratch` presets: a ~1M-parameter model trained from scratch.

Why a warm start: a randomly initialised model never writes a parsable answer, so RL has no signal;
a few hundred supervised steps on oracle demonstrations teach the format and basic moves.
"""
from configs import base


def turn_tokens(actions: int) -> int:
    """Tokens of an answer with `actions` actions (scratch tokenizer: 3 per action after the first,
    `<think></think><answer>` and `</answer>`), plus slack: the max_turn_tokens that holds them."""
    return 3 * actions + 8


def scratch_config(env_name: str, max_actions: int, l0: int, max_actions_per_turn: int = 6):
    c = base.get_config()
    c.env.name = env_name
    c.model.source = "scratch"
    c.rollout.system_prompt = "minimal"  # a model from scratch reads no prose; every token costs compute
    c.rollout.max_actions = max_actions
    c.rollout.max_actions_per_turn = max_actions_per_turn
    c.rollout.max_turn_tokens = turn_tokens(max_actions_per_turn)
    c.anneal.l0 = l0
    c.warmstart.enabled = True
    # The recipe that taught the default (Maze-5x5) in ~6 minutes on 2 cores; larger puzzles need more steps.
    c.warmstart.steps, c.warmstart.batch_size, c.warmstart.num_levels = 600, 32, 3000
    c.warmstart.curriculum = 0.5  # 300 one-action steps: the model left its plateau after 150-250 (lr 1e-3)
    c.warmstart.lr, c.warmstart.noise, c.warmstart.plan_fraction = 1e-3, 0.05, 0.3
    return c
