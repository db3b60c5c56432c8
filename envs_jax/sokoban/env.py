"""Sokoban as a pure-JAX environment (gym-sokoban / RAGEN dynamics and rewards).

Levels come from the in-JAX reverse-play generator (`generator.py`), so `reset_env` is a
jittable, vmappable function of a key. `step_env` is a few gathers and elementwise ops on
[H, W] grids: no loop over the grid, no search.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, EnvError, StepInfo
from envs_jax.sokoban.generator import (
    DELTAS, Level, default_budget, default_topology_steps, generate_level, validate_sizes)

# Glyph ids follow gym-sokoban's room_state codes (and RAGEN's GRID_LOOKUP), so ids line up with
# the reference implementations: 0 wall, 1 empty, 2 target, 3 box on target, 4 box, 5 player,
# 6 player on target.
GLYPHS = ("#", "_", "O", "√", "X", "P", "S")
GLYPH_MEANINGS = ("wall", "empty floor", "target (empty)", "box on a target", "box (not on a target)",
                  "player", "player on a target")
WALL, EMPTY, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = range(7)
ACTION_NAMES = ("Up", "Down", "Left", "Right")

RULES_TEXT = (
    "You are the player P in a Sokoban room. Push every box X onto a target O. "
    "Actions: Up, Down, Left, Right move the player one cell. Moving into a box pushes it one cell "
    "if the cell behind the box is free (floor or target); you cannot pull boxes, walk through "
    "walls #, or push a box into a wall or another box. A box on a target shows as √, the player "
    "on a target as S. Rewards: -0.1 per step, +1 when a box reaches a target, -1 when a box "
    "leaves one, +10 when all boxes are on targets (the puzzle is solved).")


@struct.dataclass
class SokobanParams:
    """Traced parameters (may differ per run or be vmapped). Generator knobs included."""

    max_steps: int = 100
    step_reward: float = -0.1
    box_on_target_reward: float = 1.0
    box_off_target_reward: float = -1.0
    finished_reward: float = 10.0
    # Generator: topology walk length (default from the env: gym-sokoban's 1.7 * (rows + cols),
    # + 12 per extra box), gym's p_change 0.35; reverse_steps is the length of the reverse-play
    # walk (default from the env: 40 / 50 / 60 for 1 / 2 / 3+ boxes; capped at the env's static
    # max_reverse_steps), p_pull the chance it takes an available pull instead of a plain move.
    topology_steps: int = 24
    p_change_direction: float = 0.35
    reverse_steps: int = 100
    p_pull: float = 0.8


@struct.dataclass
class SokobanState:
    walls: jax.Array  # bool [H, W]
    targets: jax.Array  # bool [H, W]
    boxes: jax.Array  # bool [H, W]
    player: jax.Array  # int32 [2] (row, col)
    boxes_on_target: jax.Array  # int32 []: kept incrementally so step_env needs no grid reduction
    step_count: jax.Array  # int32 []


def state_from_level(walls, targets, boxes, player) -> SokobanState:
    """State at step 0 from level arrays (jittable; bool [H, W] x3, int [2])."""
    walls = jnp.asarray(walls, bool)
    targets = jnp.asarray(targets, bool)
    boxes = jnp.asarray(boxes, bool)
    return SokobanState(
        walls=walls, targets=targets, boxes=boxes, player=jnp.asarray(player, jnp.int32),
        boxes_on_target=jnp.sum(boxes & targets, dtype=jnp.int32),
        step_count=jnp.zeros((), jnp.int32))


_CHAR_TO_CELL = {  # char -> (wall, target, box, player)
    "#": (1, 0, 0, 0), "_": (0, 0, 0, 0), " ": (0, 0, 0, 0), "O": (0, 1, 0, 0),
    "√": (0, 1, 1, 0), "X": (0, 0, 1, 0), "P": (0, 0, 0, 1), "S": (0, 1, 0, 1),
}


def parse_level(text: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host helper: text in the glyphs above (rows joined by newlines; ' ' also means floor)
    -> (walls, targets, boxes bool [H, W], player int32 [2])."""
    rows = [r for r in text.strip("\n").split("\n")]
    H, W = len(rows), max(len(r) for r in rows)
    arr = np.zeros((4, H, W), bool)
    for i, row in enumerate(rows):
        for j, ch in enumerate(row.ljust(W)):
            if ch not in _CHAR_TO_CELL:
                raise EnvError(f"Sokoban: unknown glyph {ch!r} at row {i}, col {j}")
            arr[:, i, j] = _CHAR_TO_CELL[ch]
    walls, targets, boxes, players = arr
    if players.sum() != 1:
        raise EnvError(f"Sokoban: a level needs exactly one player, found {players.sum()}")
    if boxes.sum() != targets.sum():
        raise EnvError(f"Sokoban: {boxes.sum()} boxes but {targets.sum()} targets")
    player = np.argwhere(players)[0].astype(np.int32)
    return walls, targets, boxes, player


class Sokoban(Environment[SokobanState, SokobanParams]):
    """Sokoban with `dim_room=(rows, cols)` (border walls included) and `num_boxes` boxes.

    Args:
      dim_room, num_boxes: static sizes (EnvError if no valid level exists for them).
      attempts_per_round, max_rounds: the generator's budget (rooms tried side by side per
        round, rounds at most) before its fixed fallback level; see `generator.generate_level`.
      max_topology_steps, max_reverse_steps: static bounds of the traced generator knobs.
    """

    name = "Sokoban"
    action_names = ACTION_NAMES
    glyphs = GLYPHS
    glyph_meanings = GLYPH_MEANINGS
    rules_text = RULES_TEXT

    def __init__(self, dim_room: Tuple[int, int] = (7, 7), num_boxes: int = 2,
                 attempts_per_round: int | None = None, max_rounds: int | None = None,
                 max_topology_steps: int | None = None, max_reverse_steps: int | None = None):
        self.dim_room, self.num_boxes = validate_sizes(dim_room, num_boxes)
        d_att, d_rounds, d_rev = default_budget(self.num_boxes)
        attempts_per_round = d_att if attempts_per_round is None else attempts_per_round
        max_rounds = d_rounds if max_rounds is None else max_rounds
        max_reverse_steps = d_rev if max_reverse_steps is None else max_reverse_steps
        for nm, v in (("attempts_per_round", attempts_per_round), ("max_rounds", max_rounds),
                      ("max_reverse_steps", max_reverse_steps)):
            if int(v) < 1:
                raise EnvError(f"Sokoban: {nm} must be >= 1, got {v}")
        self.attempts_per_round, self.max_rounds = int(attempts_per_round), int(max_rounds)
        self.max_topology_steps = int(max_topology_steps
                                      or default_topology_steps(self.dim_room, self.num_boxes))
        self.max_reverse_steps = int(max_reverse_steps)
        self.grid_shape = self.dim_room

    def __repr__(self) -> str:
        return f"Sokoban(dim_room={self.dim_room}, num_boxes={self.num_boxes})"

    @property
    def default_params(self) -> SokobanParams:
        H, W = self.dim_room
        return SokobanParams(
            topology_steps=min(default_topology_steps(self.dim_room, self.num_boxes),
                               self.max_topology_steps),
            reverse_steps=self.max_reverse_steps)

    # ---- levels ---------------------------------------------------------------------------------
    def generate(self, key: jax.Array, params: SokobanParams | None = None) -> Level:
        """The generator's full output (with score / attempts / fallback diagnostics)."""
        params = self.default_params if params is None else params
        return generate_level(key, params, self.dim_room, self.num_boxes,
                              attempts_per_round=self.attempts_per_round, max_rounds=self.max_rounds,
                              max_topology_steps=self.max_topology_steps,
                              max_reverse_steps=self.max_reverse_steps)

    def state_from_level(self, walls, targets, boxes, player) -> SokobanState:
        return state_from_level(walls, targets, boxes, player)

    def from_text(self, text: str) -> SokobanState:
        """Host helper: a state at step 0 from a text level of this env's size and box count."""
        walls, targets, boxes, player = parse_level(text)
        if walls.shape != self.dim_room or boxes.sum() != self.num_boxes:
            raise EnvError(
                f"Sokoban: level is {walls.shape[0]}x{walls.shape[1]} with {boxes.sum()} boxes; "
                f"this env is {self.dim_room[0]}x{self.dim_room[1]} with {self.num_boxes}")
        return state_from_level(walls, targets, boxes, player)

    def reset_env(self, key: jax.Array, params: SokobanParams):
        lvl = self.generate(key, params)
        state = state_from_level(lvl.walls, lvl.targets, lvl.boxes, lvl.player)
        return self.render_glyphs(state), state

    # ---- dynamics -------------------------------------------------------------------------------
    def step_env(self, key: jax.Array, state: SokobanState, action: jax.Array, params: SokobanParams):
        H, W = self.dim_room
        d = jnp.asarray(DELTAS)[action]  # int32 [2]
        p1 = state.player + d  # cell the player walks into (in bounds: the border is walls)
        p2 = jnp.clip(p1 + d, 0, jnp.array([H - 1, W - 1]))  # cell behind it (clipped: unused then)
        wall1 = state.walls[p1[0], p1[1]]
        box1 = state.boxes[p1[0], p1[1]]
        free2 = ~(state.walls[p2[0], p2[1]] | state.boxes[p2[0], p2[1]])
        push = box1 & free2
        moved = ~wall1 & (~box1 | push)
        # Box update as an elementwise op on the grid (cheaper than a batched scatter under vmap).
        rows = jnp.arange(H, dtype=jnp.int32)[:, None]
        cols = jnp.arange(W, dtype=jnp.int32)[None, :]
        at1 = (rows == p1[0]) & (cols == p1[1])
        at2 = (rows == p2[0]) & (cols == p2[1])
        boxes = (state.boxes & ~(push & at1)) | (push & at2)
        on2 = push & state.targets[p2[0], p2[1]]
        off1 = push & state.targets[p1[0], p1[1]]
        boxes_on_target = state.boxes_on_target + on2.astype(jnp.int32) - off1.astype(jnp.int32)
        step_count = state.step_count + 1
        success = boxes_on_target == self.num_boxes
        truncated = ~success & (step_count >= params.max_steps)
        # gym-sokoban: +1 / -1 only when the count of boxes on targets changes.
        reward = (params.step_reward
                  + jnp.where(on2 & ~off1, params.box_on_target_reward, 0.0)
                  + jnp.where(off1 & ~on2, params.box_off_target_reward, 0.0)
                  + jnp.where(success, params.finished_reward, 0.0)).astype(jnp.float32)
        state = state.replace(player=jnp.where(moved, p1, state.player), boxes=boxes,
                              boxes_on_target=boxes_on_target, step_count=step_count)
        info = StepInfo(effective=moved, success=success, truncated=truncated)
        return self.render_glyphs(state), state, reward, success | truncated, info

    def render_glyphs(self, state: SokobanState) -> jax.Array:
        H, W = self.dim_room
        rows = jnp.arange(H, dtype=jnp.int32)[:, None]
        cols = jnp.arange(W, dtype=jnp.int32)[None, :]
        is_player = (rows == state.player[0]) & (cols == state.player[1])
        t = state.targets.astype(jnp.int32)
        g = jnp.where(state.boxes, BOX - t,  # 3 box on target, 4 box
                      jnp.where(is_player, PLAYER + t,  # 5 player, 6 player on target
                                EMPTY + t))  # 1 empty, 2 target
        return jnp.where(state.walls, WALL, g).astype(jnp.int32)

    # ---- helpers --------------------------------------------------------------------------------
    def is_solved(self, state: SokobanState) -> jax.Array:
        return state.boxes_on_target == self.num_boxes
