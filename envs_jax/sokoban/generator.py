"""Sokoban level generation by reverse play, entirely in JAX (jittable, vmappable over keys).

The recipe follows gym-sokoban's `generate_room` (the generator behind RAGEN's Sokoban levels):

1. Room topology: a random walk inside the border walls stamps one of five 3x3 floor patterns at
   every step and changes direction with probability `p_change_direction`
   (gym-sokoban's `room_topology_generation`, same masks, same clamping, same step count default).
2. Placement: the player and `num_boxes` targets on distinct random floor cells; every box
   starts on its own target (a solved position).
3. Reverse play: the player walks at random; a move with the *pull* flag drags the box right
   behind the player along. Pulls are exact inverses of pushes, so every position visited is
   solvable forward. We keep the best-scoring position of the walk, with gym-sokoban's score:
   (number of pulls) x (sum of Manhattan distances of every box from its own target), and the
   position only counts when **no box is on a target** (gym-sokoban's rule, which makes the level
   never start solved and every box need at least one push).
4. Retry: rounds of `attempts_per_round` rooms made side by side (vmapped), the best of a round
   kept; up to `max_rounds` rounds (a bounded `while_loop`) until a round has a room scoring > 0.

Deviations from gym-sokoban (why): the exhaustive depth-first reverse search (ttl 300, up to
300k states, host recursion) becomes a random walk of `reverse_steps` steps with a best-so-far
snapshot: it is a fixed-shape loop, runs in XLA, and vmaps. gym-sokoban's score also zeroes
positions where the *player* stands on a target (a side effect of its integer encoding); we do not.

Fallback (documented contract): if every attempt fails (too few floor cells, or no walk left all
boxes off their targets), the level is a fixed, valid, unsolved one: an open room with box i at
interior (i, 1), its target at (i, 2) and the player at (0, 0) (transposed when the room is
too narrow for that). `Level.fallback` flags it. At the preset sizes this is
rare (see the tests / report); it is what guarantees "always solvable, never solved".
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import EnvError

# Up, Down, Left, Right as (d_row, d_col); also the env's action order.
DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int32)

# gym-sokoban's five 3x3 floor patterns, as 9-bit masks (bit 3*r + c of the 3x3 window).
_MASKS_3x3 = [
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
    [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
    [[0, 0, 0], [1, 1, 0], [1, 1, 0]],
    [[0, 0, 0], [0, 1, 1], [0, 1, 0]],
]
MASK_BITS = np.array(
    [sum(int(m[r][c]) << (3 * r + c) for r in range(3) for c in range(3)) for m in _MASKS_3x3],
    dtype=np.int32)


@struct.dataclass
class Level:
    """One level (unbatched shapes; vmapped generation adds a leading axis)."""

    walls: jax.Array  # bool [H, W]
    targets: jax.Array  # bool [H, W]
    boxes: jax.Array  # bool [H, W]
    player: jax.Array  # int32 [2] (row, col)
    score: jax.Array  # int32 []: gym-sokoban score (pulls x box displacement); 0 for the fallback
    attempts: jax.Array  # int32 []: rooms tried
    fallback: jax.Array  # bool []: every attempt failed, the fixed fallback level was used


def default_topology_steps(dim_room) -> int:
    """gym-sokoban's default random-walk length for the room topology."""
    return int(1.7 * (dim_room[0] + dim_room[1]))


def box_capacity(dim_room: Tuple[int, int]) -> int:
    """Most boxes for which the fallback level (hence a valid level) exists."""
    h, w = dim_room[0] - 2, dim_room[1] - 2
    return max(h if w >= 3 else 0, w if h >= 3 else 0)


def validate_sizes(dim_room, num_boxes) -> Tuple[Tuple[int, int], int]:
    """Static checks shared by the env and the generator; raises EnvError."""
    try:
        H, W = (int(d) for d in dim_room)
    except Exception as e:  # noqa: BLE001
        raise EnvError(f"Sokoban: dim_room must be two ints (rows, cols), got {dim_room!r}") from e
    if H < 4 or W < 4:
        raise EnvError(
            f"Sokoban: dim_room={H}x{W} is too small; both sides must be >= 4 (border walls "
            f"included), and at least one side >= 5")
    if isinstance(num_boxes, bool) or int(num_boxes) != num_boxes or num_boxes < 1:
        raise EnvError(f"Sokoban: num_boxes must be an int >= 1, got {num_boxes!r}")
    num_boxes = int(num_boxes)
    cap = box_capacity((H, W))
    if num_boxes > cap:
        raise EnvError(
            f"Sokoban: {num_boxes} boxes do not fit a {H}x{W} room (interior {H-2}x{W-2}); "
            f"at most {cap} box(es) for this size (each box needs a free line of 3 cells and a "
            f"walkway), and at least one side must be >= 5")
    return (H, W), num_boxes


def fallback_level(dim_room, num_boxes) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed valid level used when every attempt fails (numpy; see module docstring)."""
    (H, W), nb = validate_sizes(dim_room, num_boxes)
    h, w = H - 2, W - 2
    transpose = not (w >= 3 and nb <= h)
    hh, ww = (w, h) if transpose else (h, w)
    walls = np.ones((hh + 2, ww + 2), bool)
    walls[1:-1, 1:-1] = False
    boxes = np.zeros_like(walls)
    targets = np.zeros_like(walls)
    for i in range(nb):
        boxes[1 + i, 2] = True
        targets[1 + i, 3] = True
    player = np.array([1, 1], np.int32)
    if transpose:
        walls, boxes, targets = walls.T.copy(), boxes.T.copy(), targets.T.copy()
    return walls, targets, boxes, player


def _topology(key, H: int, W: int, max_steps: int, num_steps, p_change) -> jax.Array:
    """gym-sokoban's room_topology_generation: bool [H, W] floor mask (True = floor).

    No loop: the walk's directions come from a running "last change" index (cummax), the clamped
    positions from an unrolled chain of scalar adds (fused by XLA), and the 3x3 stamps of all
    steps are OR-ed over a [S, H, W] broadcast. `max_steps` (static) sets the shape; the traced
    `num_steps` masks the steps beyond it.
    """
    S = int(max_steps)
    k_dir, k_r, k_c, k_chg, k_new, k_mask = jax.random.split(key, 6)
    deltas = jnp.asarray(DELTAS)
    direction0 = jax.random.randint(k_dir, (), 0, 4)
    change = jax.random.uniform(k_chg, (S,)) < p_change  # bool [S]
    new_dir = jax.random.randint(k_new, (S,), 0, 4)
    # direction at step s = new_dir[last change <= s], or direction0 if none yet
    steps = jnp.arange(S, dtype=jnp.int32)
    last = jax.lax.cummax(jnp.where(change, steps, -1), axis=0)
    direction = jnp.where(last >= 0, new_dir[jnp.maximum(last, 0)], direction0)  # int32 [S]
    d = deltas[direction]  # int32 [S, 2]
    pos = jnp.stack([jax.random.randint(k_r, (), 1, H - 1), jax.random.randint(k_c, (), 1, W - 1)])
    lo = jnp.array([1, 1], jnp.int32)
    hi = jnp.array([H - 2, W - 2], jnp.int32)
    centres = []
    for s in range(S):  # clamped walk: S tiny scalar updates, unrolled
        pos = jnp.clip(pos + d[s], lo, hi)
        centres.append(pos)
    centres = jnp.stack(centres)  # int32 [S, 2]
    bits = jnp.asarray(MASK_BITS)[jax.random.randint(k_mask, (S,), 0, len(MASK_BITS))]  # [S]
    rows = jnp.arange(H, dtype=jnp.int32)[None, :, None]
    cols = jnp.arange(W, dtype=jnp.int32)[None, None, :]
    dr = rows - centres[:, 0, None, None] + 1  # [S, H, 1]
    dc = cols - centres[:, 1, None, None] + 1  # [S, 1, W]
    inside = (dr >= 0) & (dr < 3) & (dc >= 0) & (dc < 3)
    bit = (bits[:, None, None] >> jnp.clip(3 * dr + dc, 0, 8)) & 1
    active = (steps < num_steps)[:, None, None]
    floor = jnp.any(inside & (bit == 1) & active, axis=0)  # bool [H, W]
    r2, c2 = rows[0], cols[0]
    border = (r2 == 0) | (r2 == H - 1) | (c2 == 0) | (c2 == W - 1)
    return floor & ~border


def _attempt(key, H: int, W: int, num_boxes: int, max_topology_steps: int, max_reverse_steps: int,
             params):
    """One room + placement + reverse walk. Returns (walls_flat, targets [nb], boxes [nb],
    player, score); positions are flat indices r * W + c; score 0 means failure."""
    k_topo, k_place, k_walk = jax.random.split(key, 3)
    floor2 = _topology(k_topo, H, W, max_topology_steps, params.topology_steps,
                       params.p_change_direction)
    floor = floor2.reshape(-1)
    walls = ~floor
    k_t, k_p = jax.random.split(k_place)
    # Targets on distinct random floor cells, preferring cells a box can be pulled off (two
    # floor cells in a row next to it; most failed attempts had a target in a dead end).
    fp = jnp.pad(floor2, 2)
    pullable = floor2 & ((fp[:H, 2:W + 2] & fp[1:H + 1, 2:W + 2]) | (fp[4:, 2:W + 2] & fp[3:H + 3, 2:W + 2])
                         | (fp[2:H + 2, :W] & fp[2:H + 2, 1:W + 1]) | (fp[2:H + 2, 4:] & fp[2:H + 2, 3:W + 3]))
    noise = jnp.where(floor, jax.random.uniform(k_t, (H * W,)) + pullable.reshape(-1), -1.0)
    _, targets = jax.lax.top_k(noise, num_boxes)
    targets = targets.astype(jnp.int32)  # int32 [nb]
    enough_floor = jnp.sum(floor) >= num_boxes + 1
    # Player on another floor cell, preferably next to a target so the first pulls come at once
    # (any start is valid: reverse play only needs *some* final player position).
    idx = jnp.arange(H * W, dtype=jnp.int32)
    tgrid = jnp.any(idx[:, None] == targets[None, :], axis=1).reshape(H, W)
    tpad = jnp.pad(tgrid, 1)
    near = tpad[:-2, 1:-1] | tpad[2:, 1:-1] | tpad[1:-1, :-2] | tpad[1:-1, 2:]
    pscore = jax.random.uniform(k_p, (H * W,)) + near.reshape(-1)
    player0 = jnp.argmax(jnp.where(floor & ~tgrid.reshape(-1), pscore, -1.0)).astype(jnp.int32)
    t_r, t_c = targets // W, targets % W
    dflat = jnp.asarray(DELTAS[:, 0] * W + DELTAS[:, 1])  # int32 [4]: Up, Down, Left, Right

    # All the walk's random numbers at once (one vectorised draw, not a PRNG call per step).
    k1, k2 = jax.random.split(k_walk)
    u_pull = jax.random.uniform(k1, (max_reverse_steps,))
    u_dir = jax.random.uniform(k2, (max_reverse_steps, 4))

    def body(s, carry):
        player, boxes, pulls, best = carry
        nxt = player + dflat  # [4] (in bounds: the player stays inside the border walls)
        behind = player - dflat  # [4]
        free = ~walls[nxt] & ~jnp.any(boxes[None, :] == nxt[:, None], axis=1)  # bool [4]
        box_behind = boxes[None, :] == behind[:, None]  # bool [4, nb]
        pullable = free & jnp.any(box_behind, axis=1)  # bool [4]
        # Pull-greedy walk: when some pull is possible, take one with probability p_pull;
        # otherwise move (without pulling) in a random free direction.
        do_pull = jnp.any(pullable) & (u_pull[s] < params.p_pull)
        allowed = jnp.where(do_pull, pullable, free)
        a = jnp.argmax(jnp.where(allowed, u_dir[s], -1.0))
        moved = allowed[a]
        boxes = jnp.where(do_pull & box_behind[a], player, boxes)
        player = jnp.where(moved, nxt[a], player)
        pulls = pulls + do_pull.astype(jnp.int32)
        disp = jnp.sum(jnp.abs(boxes // W - t_r) + jnp.abs(boxes % W - t_c))
        none_on_target = ~jnp.any(boxes[:, None] == targets[None, :])
        score = jnp.where(none_on_target, pulls * disp, 0)
        better = score > best[0]
        best = jax.tree.map(lambda n, o: jnp.where(better, n, o), (score, player, boxes), best)
        return player, boxes, pulls, best

    init = (player0, targets, jnp.int32(0), (jnp.int32(0), player0, targets))
    n_steps = (min(params.reverse_steps, max_reverse_steps) if isinstance(params.reverse_steps, int)
               else jnp.minimum(params.reverse_steps, max_reverse_steps))
    _, _, _, (score, player, boxes) = jax.lax.fori_loop(0, n_steps, body, init)
    score = jnp.where(enough_floor, score, 0)
    return walls, targets, boxes, player, score


def generate_level(key: jax.Array, params, dim_room: Tuple[int, int], num_boxes: int,
                   attempts_per_round: int = 4, max_rounds: int = 4,
                   max_topology_steps: int | None = None, max_reverse_steps: int = 400) -> Level:
    """A solvable, unsolved level (no box on a target) from `key`. Jittable, vmappable.

    `params` needs fields topology_steps, p_change_direction, reverse_steps, p_pull (traced:
    `SokobanParams` has them). Static: `dim_room`, `num_boxes`; the search budget: rounds of
    `attempts_per_round` rooms generated side by side (width is cheaper than depth under vmap:
    a `while_loop` runs until its slowest lane is done), at most `max_rounds` rounds, the best
    scoring room of a round kept; and the shapes bounding the traced knobs:
    `params.topology_steps <= max_topology_steps` (default 2 x gym-sokoban's 1.7 x (rows + cols)),
    `params.reverse_steps <= max_reverse_steps` (extra steps are ignored).
    """
    (H, W), nb = validate_sizes(dim_room, num_boxes)
    if max_topology_steps is None:
        max_topology_steps = 2 * default_topology_steps((H, W))
    n = H * W
    fb_walls, fb_targets, fb_boxes, fb_player = fallback_level((H, W), nb)

    def cond(c):
        rnd, found = c[0], c[1]
        return (rnd < max_rounds) & ~found

    def body(c):
        rnd, found, walls, targets, boxes, player, score = c
        keys = jax.random.split(jax.random.fold_in(key, rnd), attempts_per_round)
        outs = jax.vmap(lambda k: _attempt(k, H, W, nb, max_topology_steps, max_reverse_steps,
                                           params))(keys)
        best = jnp.argmax(outs[4])  # gym-style preference: the highest score of the round
        out = jax.tree.map(lambda x: x[best], outs)
        ok = out[4] > 0
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), out, (walls, targets, boxes, player, score))
        return (rnd + 1, ok) + tuple(new)

    zi = jnp.zeros((nb,), jnp.int32)
    init = (jnp.int32(0), jnp.bool_(False), jnp.zeros((n,), bool), zi, zi, jnp.int32(0), jnp.int32(0))
    rounds, found, walls, targets, boxes, player, score = jax.lax.while_loop(cond, body, init)
    attempts = rounds * attempts_per_round

    idx = jnp.arange(n, dtype=jnp.int32)
    targets_g = jnp.any(idx[:, None] == targets[None, :], axis=1).reshape(H, W)
    boxes_g = jnp.any(idx[:, None] == boxes[None, :], axis=1).reshape(H, W)
    walls = walls.reshape(H, W)
    player_rc = jnp.stack([player // W, player % W]).astype(jnp.int32)
    sel = lambda a, b: jnp.where(found, a, jnp.asarray(b))  # noqa: E731
    return Level(
        walls=sel(walls, fb_walls), targets=sel(targets_g, fb_targets), boxes=sel(boxes_g, fb_boxes),
        player=sel(player_rc, fb_player), score=score, attempts=attempts, fallback=~found)
