"""One host-side entry to every environment's oracle: shortest solution length and one optimal plan.

Maze and Taxi oracles are jittable (`envs_jax.maze.solve`, `envs_jax.taxi.solve`, padded plans);
Sokoban's is an exact BFS in numpy. These helpers give all three the same host signature, for
efficiency metrics (optimality gap) and warm-start demonstrations.
"""

from __future__ import annotations

from typing import List, Optional

import jax
import numpy as np


_JIT_CACHE = {}


def _jitted(env, fn):
    key = (id(env), fn)
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = (env, jax.jit(lambda s: fn(env, s)))  # keep env alive with its jit
    return _JIT_CACHE[key][1]


def optimal_actions(env, state, params=None) -> Optional[List[int]]:
    """An optimal action list from `state` (unbatched) to success, or None if unsolvable."""
    name = type(env).__name__
    if name == "Sokoban":
        from envs_jax.sokoban import solve_state

        out = solve_state(env, state)
        return None if out is None else [int(a) for a in out[1]]
    if name in ("Maze", "Taxi"):
        from envs_jax.maze import solve as maze_solve
        from envs_jax.taxi import solve as taxi_solve

        length, plan = jax.device_get(_jitted(env, maze_solve if name == "Maze" else taxi_solve)(state))
        length = int(length)
        if length < 0:
            return None
        return [int(a) for a in np.asarray(plan)[:length]]
    raise TypeError(f"no oracle for environment {name}")


def optimal_length(env, state, params=None) -> Optional[int]:
    acts = optimal_actions(env, state, params)
    return None if acts is None else len(acts)
