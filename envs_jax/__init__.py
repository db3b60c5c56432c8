"""Pure-JAX grid puzzles (Sokoban, Maze, Taxi) with a gymnax-style API.

    import envs_jax
    env, params = envs_jax.make("Sokoban-Standard")
    obs, state = env.reset(key, params)
    obs, state, reward, done, info = env.step(key, state, action, params)
"""

from envs_jax.core import Environment, EnvError, StepInfo
from envs_jax.registry import PRESETS, list_envs, make, register
from envs_jax.wrappers import LevelQueueAutoReset, QueueState

__all__ = ["Environment", "EnvError", "StepInfo", "make", "register", "list_envs", "PRESETS",
           "LevelQueueAutoReset", "QueueState"]
