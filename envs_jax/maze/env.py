"""Maze: walk from the start to the goal through a random perfect maze (pure JAX).

Grid: `size x size` squares (odd, >= 5); cells of an ((size-1)/2)^2 lattice at odd coordinates,
walls between them unless the maze opens that edge (see `generator.py`). The player moves one
square per action; the goal is a cell square distinct from the start.

Glyphs: `#` wall, `_` open square, `P` player, `G` goal. When the player stands on the goal the
episode is over (success) and the square shows `P`.

Actions: 0 Up, 1 Down, 2 Left, 3 Right. Moving into a wall leaves the state unchanged (not
effective) and still costs a step.

Rewards (params): `step_reward` every step (default 0.0: the outcome alone is rewarded, which keeps
WMAct's rescaled reward `R * N_eff / N` in [0, goal_reward]) plus `goal_reward` (default 1.0) on
the step that reaches the goal. Episode ends on reaching the goal or after `max_steps` steps
(default max(100, 4 * cells): at least twice the longest possible shortest path, 2 * cells - 2).
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment, StepInfo, EnvError
from envs_jax.maze import generator

WALL, OPEN, PLAYER, GOAL = 0, 1, 2, 3
# action -> (d_row, d_col): Up, Down, Left, Right
_DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@struct.dataclass
class MazeParams:
    max_steps: int = 100  # episode truncated after this many steps
    step_reward: float = 0.0  # added every step (e.g. -0.01 for a step penalty)
    goal_reward: float = 1.0  # added on the step that reaches the goal


@struct.dataclass
class MazeState:
    walls: jax.Array  # bool [size, size], True = wall (rim included)
    pos: jax.Array  # int32 [2] player (row, col)
    goal: jax.Array  # int32 [2] goal (row, col)
    step_count: jax.Array  # int32 []


class Maze(Environment[MazeState, MazeParams]):
    """`Maze(size=7, goal_placement="random")`.

    size: rendered grid side, odd and >= 5 (5, 7, 9, 11, 21, ...).
    goal_placement: "random" (two distinct random cells), "farthest" (goal = the cell farthest
      from a random start) or "diameter" (start and goal at the ends of a longest path).
    """

    action_names = ("Up", "Down", "Left", "Right")
    glyphs = ("#", "_", "P", "G")
    glyph_meanings = ("wall", "open floor", "player", "goal")

    def __init__(self, size: int = 7, goal_placement: str = "random"):
        self.size = generator.check_size(size)
        if goal_placement not in generator.GOAL_PLACEMENTS:
            raise EnvError(
                f"Maze goal_placement must be one of {generator.GOAL_PLACEMENTS}, got {goal_placement!r}")
        self.goal_placement = goal_placement
        self.num_cells = ((self.size - 1) // 2) ** 2
        self.max_solution_length = 2 * self.num_cells - 2  # longest possible shortest path
        self.name = f"Maze-{self.size}x{self.size}"
        self.grid_shape = (self.size, self.size)
        self.rules_text = (
            f"A {self.size}x{self.size} maze. `#` is a wall, `_` open floor, `P` you, `G` the goal. "
            "Actions: Up, Down, Left, Right move one square; moving into a wall does nothing. "
            "Reach G to win; there is exactly one path between any two open squares."
        )
        self._deltas = jnp.asarray(_DELTAS, jnp.int32)  # [4, 2]

    @property
    def default_params(self) -> MazeParams:
        return MazeParams(max_steps=max(100, 4 * self.num_cells))

    def reset_env(self, key: jax.Array, params: MazeParams) -> Tuple[jax.Array, MazeState]:
        walls, start, goal = generator.generate(key, self.size, self.goal_placement)
        state = MazeState(walls=walls, pos=start, goal=goal, step_count=jnp.int32(0))
        return self.render_glyphs(state), state

    def reset_to_level(self, walls: jax.Array, start: jax.Array, goal: jax.Array):
        """A state at step 0 on a given level (e.g. from `generator.generate`): (obs, state)."""
        state = MazeState(walls=jnp.asarray(walls, bool), pos=jnp.asarray(start, jnp.int32),
                          goal=jnp.asarray(goal, jnp.int32), step_count=jnp.int32(0))
        return self.render_glyphs(state), state

    def step_env(self, key, state: MazeState, action, params: MazeParams):
        # A handful of gathers: delta lookup, one wall lookup (the rim keeps moves in bounds).
        target = state.pos + self._deltas[action]  # [2]
        blocked = state.walls[target[0], target[1]]
        pos = jnp.where(blocked, state.pos, target)
        success = jnp.all(pos == state.goal)
        step_count = state.step_count + 1
        truncated = (step_count >= params.max_steps) & ~success
        reward = (jnp.asarray(params.step_reward, jnp.float32)
                  + jnp.where(success, jnp.asarray(params.goal_reward, jnp.float32), 0.0))
        state = state.replace(pos=pos, step_count=step_count)
        info = StepInfo(effective=~blocked, success=success, truncated=truncated)
        return self.render_glyphs(state), state, reward, success | truncated, info

    def render_glyphs(self, state: MazeState) -> jax.Array:
        # int32 [size, size]; elementwise compares against iotas (no scatter).
        rows = jnp.arange(self.size, dtype=jnp.int32)[:, None]
        cols = jnp.arange(self.size, dtype=jnp.int32)[None, :]
        grid = jnp.where(state.walls, WALL, OPEN).astype(jnp.int32)
        grid = jnp.where((rows == state.goal[0]) & (cols == state.goal[1]), GOAL, grid)
        return jnp.where((rows == state.pos[0]) & (cols == state.pos[1]), PLAYER, grid)
