"""Shared settings of the `<env>_scratch` presets: a ~1M-parameter model trained from scratch.

Why a warm start: a randomly initialised model never writes a parsable answer, so RL has no signal;
a few hundred supervised steps on oracle demonstrations teach the format and basic moves.
"""
from configs import base


def scratch_config(env_name: str, max_actions: int, l0: int):
    c = base.get_config()
    c.env.name = env_name
    c.model.source = "scratch"
    c.rollout.max_actions = max_actions
    c.anneal.l0 = l0
    c.warmstart.enabled = True
    return c
