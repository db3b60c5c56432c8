"""Maze oracle: BFS distance transform from the goal, then greedy descent (jittable, vmappable).

`solve(env, state)` -> (length int32 [], actions int32 [env.max_solution_length]) where the first
`length` actions are an optimal plan from `state.pos` and the rest are padding `-1`.
In a perfect maze the shortest path is the unique path, so the plan is the only optimal one.
Unreachable goals (impossible in generated mazes) give length -1 and all padding.
Works on the lattice layout of `generator.py` with the goal on a cell square (as generated); the
BFS runs on the (size-1)/2 square cell lattice, which is 8x cheaper than on the grid.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from envs_jax.maze.env import Maze, MazeState, _DELTAS
from envs_jax.maze.generator import UNREACHED, grid_distances_to_cell

PAD = -1


def solve(env: Maze, state: MazeState) -> Tuple[jax.Array, jax.Array]:
    """Optimal length and plan from the state's position to its goal (see module doc)."""
    dist = grid_distances_to_cell(state.walls, state.goal)  # int32 [H, W] moves to the goal
    length = dist[state.pos[0], state.pos[1]]
    deltas = jnp.asarray(_DELTAS, jnp.int32)  # [4, 2]

    def walk(pos, _):
        here = dist[pos[0], pos[1]]
        nbrs = pos[None, :] + deltas  # [4, 2]
        nd = dist[nbrs[:, 0], nbrs[:, 1]]  # [4]; walls are UNREACHED
        a = jnp.argmin(nd).astype(jnp.int32)
        moving = (here > 0) & (here < UNREACHED) & (nd[a] == here - 1)
        return jnp.where(moving, nbrs[a], pos), jnp.where(moving, a, PAD)

    _, actions = jax.lax.scan(walk, state.pos, None, length=env.max_solution_length)
    length = jnp.where(length < UNREACHED, length, -1).astype(jnp.int32)
    return length, actions
