"""Sokoban level generation by reverse play, entirely in JAX (jittable, vmappable over keys).

The recipe follows gym-sokoban's `generate_room` (the generator behind RAGEN's Sokoban levels):

1. Room topology: a random walk inside the border walls stamps one of five 3x3 floor patterns at
   every step and changes direction with probability `p_change_direction`
   (gym-sokoban's `room_topology_generation`: same masks and clamping; walk length 1.7 x
   (rows + cols) as gym's default, + 12 per extra box). Built as uint32 row bitmasks in a
   `lax.scan` with a tiny body.
2. Placement: `num_boxes` targets on distinct random floor cells (preferring cells a box can be
   pulled off), every box on its own target (a solved position); the player on another floor
   cell, preferably next to a target.
3. Reverse play: a walk of `reverse_steps` steps; when a pull is available (a box right behind
   the player, free cell ahead) the walk takes one with probability `p_pull` (always when the
   pull takes a box off a target), else it moves to a random free neighbour; pulls into a wall
   dead end are skipped, and a player left with no free neighbour restarts from the solved
   position. Pulls are exact inverses of pushes, so every position visited is solvable
   forward. We keep the best-scoring position of the walk, with gym-sokoban's score:
   (number of pulls) x (sum of Manhattan distances of every box from its own target), and the
   position only counts when **no box is on a target** (gym-sokoban's rule, which makes the level
   never start solved and every box need at least one push).
4. Retry: `attempts_per_round` rooms made side by side (vmapped), the best scoring one kept; up
   to `max_rounds` rounds (a bounded `while_loop`, only built when max_rounds > 1) until a round
   has a room scoring > 0. Defaults per box count: `default_budget`.

Speed (why the code looks the way it does): under vmap every loop runs as long as its slowest
lane and XLA:CPU runs each op of a loop body as its own small kernel, so the walk is a
fixed-length `lax.scan` (no traced trip count) whose body is a few dozen elementwise ops on
per-lane scalars: positions are flat cell indices, boxes a tuple of `num_boxes` scalars (no grid
scatter), walls one gather per step from a precomputed uint8 free-neighbour table (4 bits
"neighbour is floor", 4 bits "neighbour is not a dead end"), random numbers one uint32 per step
drawn up front (8 bits for the pull decision, 4 x 6 bits of direction priorities). Targets are
picked by repeated argmax (XLA:CPU's `top_k` was ~50x slower under vmap), and the topology is a
scan over row bitmasks instead of an [S, H, W] broadcast. About 4-20x more levels/s than the
first version at equal difficulty.

Deviations from gym-sokoban (why): the exhaustive depth-first reverse search (ttl 300, up to
300k states, host recursion) becomes a pull-greedy random walk with a best-so-far snapshot: a
fixed-shape loop that runs in XLA and vmaps. Target/player placement is biased as above, and the
topology walk gets 12 extra steps per extra box, because with gym's sparse rooms most multi-box
attempts cannot yield a level at all. gym-sokoban's score also zeroes positions where the
*player* stands on a target (a side effect of its integer encoding); ours does not.

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


def default_topology_steps(dim_room, num_boxes: int = 1) -> int:
    """Random-walk length of the room topology: gym-sokoban's 1.7 x (rows + cols), plus 8 per
    extra box (our deviation: with gym's length a 7x7 room averages ~14 floor cells and only ~14%
    of 3-box rooms admit a level; with +16 steps ~26% do, and the fallback becomes rare)."""
    return int(1.7 * (dim_room[0] + dim_room[1])) + 12 * (int(num_boxes) - 1)


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
    if W > 32:
        raise EnvError(f"Sokoban: dim_room={H}x{W} is too wide; at most 32 columns (the generator "
                       f"keeps one uint32 bitmask per row)")
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


# Row patterns of the masks: MASK_ROWS[m, k] = the 3 bits of row k of mask m (bit c = column c).
MASK_ROWS = np.array([[(int(b) >> (3 * k)) & 7 for k in range(3)] for b in MASK_BITS], np.uint32)


def _u16(bits, shift):
    return (bits >> shift) & 0xFFFF


def _topology(bits, bits0, H: int, W: int, num_steps, p_change) -> jax.Array:
    """gym-sokoban's room_topology_generation as a uint32 bitmask per row: uint32 [H] (bit c of
    row r set = floor at (r, c)), the border cleared.

    `bits` (uint32 [S], one word per walk step; S = the static bound) and `bits0` (uint32 [])
    are the random numbers; the traced `num_steps` masks the steps beyond it. A `lax.scan` with
    a tiny body (direction change, clamped move, 3x3 stamp OR-ed into the row bitmasks): under
    vmap this is far cheaper than an [S, H, W] broadcast, a cummax or an associative scan.
    """
    thr = jnp.asarray(jnp.clip(p_change, 0.0, 1.0) * 65536.0, jnp.float32).astype(jnp.uint32)
    pats = jnp.asarray(MASK_ROWS)  # uint32 [5, 3]
    dr = jnp.asarray(DELTAS[:, 0])
    dc = jnp.asarray(DELTAS[:, 1])
    row_ids = jnp.arange(H, dtype=jnp.int32)

    def body(carry, u):
        direction, r, c, rows, s = carry
        change = (u & 0xFFFF) < thr  # p_change at 16-bit resolution
        direction = jnp.where(change, ((u >> 16) & 3).astype(jnp.int32), direction)
        r = jnp.clip(r + dr[direction], 1, H - 2)
        c = jnp.clip(c + dc[direction], 1, W - 2)
        pat = pats[((((u >> 18) & 0xFF) * len(MASK_BITS)) >> 8).astype(jnp.int32)] << (c - 1).astype(jnp.uint32)
        stamp = (jnp.where(row_ids == r - 1, pat[0], jnp.uint32(0)) | jnp.where(row_ids == r, pat[1], jnp.uint32(0))
                 | jnp.where(row_ids == r + 1, pat[2], jnp.uint32(0)))
        rows = rows | jnp.where(s < num_steps, stamp, jnp.uint32(0))
        return (direction, r, c, rows, s + 1), None

    direction0 = (bits0 & 3).astype(jnp.int32)
    r0 = 1 + ((_u16(bits0, 2) * (H - 2)) >> 16).astype(jnp.int32)
    c0 = 1 + ((bits0 >> 18) * (W - 2) >> 14).astype(jnp.int32)
    init = (direction0, r0, c0, jnp.zeros((H,), jnp.uint32), jnp.int32(0))
    rows = jax.lax.scan(body, init, bits)[0][3]
    inner = np.uint32(((1 << (W - 1)) - 1) & ~1)  # columns 1 .. W-2
    row_ok = np.array([0] + [1] * (H - 2) + [0], bool)
    return jnp.where(jnp.asarray(row_ok), rows & inner, jnp.uint32(0))


def _unpack_rows(rows, W: int) -> jax.Array:
    """uint32 [H] row bitmasks -> bool [H * W] (flat r * W + c)."""
    return (((rows[:, None] >> jnp.arange(W, dtype=jnp.uint32)[None, :]) & 1) == 1).reshape(-1)


def _pick_distinct(score, k: int):
    """Indices of the k largest entries (int32 [k]) by repeated argmax (XLA:CPU's top_k is ~50x
    slower under vmap)."""
    cell = jnp.arange(score.shape[0], dtype=jnp.int32)
    out = []
    for _ in range(k):
        i = jnp.argmax(score).astype(jnp.int32)
        out.append(i)
        score = jnp.where(cell == i, jnp.iinfo(score.dtype).min, score)
    return jnp.stack(out)


def _attempt(key, H: int, W: int, num_boxes: int, max_topology_steps: int, n_reverse: int, params):
    """One room + placement + reverse walk. Returns (walls_flat, targets [nb], boxes [nb],
    player, score); positions are flat indices r * W + c; score 0 means failure."""
    nb = num_boxes
    n = H * W
    S, T = int(max_topology_steps), int(n_reverse)
    bits = jax.random.bits(key, (S + 1 + n + T,), jnp.uint32)
    b_topo, b0, b_cell, b_walk = bits[:S], bits[S], bits[S + 1:S + 1 + n], bits[S + 1 + n:]
    rows = _topology(b_topo, b0, H, W, params.topology_steps, params.p_change_direction)
    floor = _unpack_rows(rows, W)  # bool [n]

    # Targets on distinct random floor cells, preferring cells a box can be pulled off (two
    # floor cells in a row next to it), computed on the row bitmasks.
    z = jnp.zeros((2,), jnp.uint32)
    rp = jnp.concatenate([z, rows, z])  # rows padded by 2 on each side
    up1, up2, dn1, dn2 = rp[1:H + 1], rp[0:H], rp[3:H + 3], rp[4:H + 4]
    pull_rows = rows & ((up1 & up2) | (dn1 & dn2) | ((rows << 1) & (rows << 2))
                        | ((rows >> 1) & (rows >> 2)))
    pullable = _unpack_rows(pull_rows, W)
    # score: floor cells > 0, pullable ones first, random order within (16 random bits)
    t_key = jnp.where(floor, (b_cell & 0xFFFF).astype(jnp.int32) + 1 + (pullable << 16), 0)
    targets = _pick_distinct(t_key, nb)
    enough_floor = jnp.sum(floor, dtype=jnp.int32) >= nb + 1
    # Player on another floor cell, preferably next to a target (any start is valid: reverse
    # play only needs *some* final player position).
    cell = jnp.arange(n, dtype=jnp.int32)
    tflat = jnp.zeros((n,), bool)
    for i in range(nb):
        tflat = tflat | (cell == targets[i])
    tp = jnp.pad(tflat, W)
    near = tp[W - 1:W - 1 + n] | tp[W + 1:W + 1 + n] | tp[:n] | tp[2 * W:2 * W + n]
    p_key = jnp.where(floor & ~tflat, (b_cell >> 16).astype(jnp.int32) + 1 + (near << 16), 0)
    player0 = jnp.argmax(p_key).astype(jnp.int32)

    # Free-neighbour table: bit d of fm[c] = cell c + delta_d is floor (d = Up, Down, Left, Right).
    fp = jnp.pad(floor, W)
    fm = (fp[:n].astype(jnp.int32) | (fp[2 * W:2 * W + n].astype(jnp.int32) << 1)
          | (fp[W - 1:W - 1 + n].astype(jnp.int32) << 2) | (fp[W + 1:W + 1 + n].astype(jnp.int32) << 3))
    offs = [int(DELTAS[d, 0]) * W + int(DELTAS[d, 1]) for d in range(4)]
    # bit 4 + d: the neighbour in direction d has another floor neighbour (not a dead end)
    deg = sum(((fm >> d) & 1) for d in range(4))
    live = jnp.pad(floor & (deg >= 2), W).astype(jnp.int32)
    fm = fm | ((live[:n] << 4) | (live[2 * W:2 * W + n] << 5) | (live[W - 1:W - 1 + n] << 6)
               | (live[W + 1:W + 1 + n] << 7))
    fm8 = fm.astype(jnp.uint8)
    t_list = [targets[i] for i in range(nb)]
    t_r = [t // W for t in t_list]
    t_c = [t % W for t in t_list]
    thr_pull = jnp.asarray(jnp.clip(params.p_pull, 0.0, 1.0) * 256.0, jnp.float32).astype(jnp.uint32)
    n_steps = jnp.asarray(params.reverse_steps, jnp.int32)

    def body(carry, xs):
        u, s = xs
        player, boxes, pulls, best = carry
        fmask = fm8[player].astype(jnp.int32)
        nxt = [player + o for o in offs]
        beh = [player - o for o in offs]
        free, pull = [], []
        for d in range(4):
            f = ((fmask >> d) & 1) == 1
            bh = jnp.zeros((), bool)
            for b in boxes:
                f = f & (b != nxt[d])
                bh = bh | (b == beh[d])
            free.append(f)
            # no pull into a dead end (the box would seal the player in for good)
            bh = bh & (((fmask >> (4 + d)) & 1) == 1)
            pull.append(f & bh)
        any_pull = pull[0] | pull[1] | pull[2] | pull[3]
        do_pull = any_pull & ((u & 0xFF) < thr_pull) & (s < n_steps)
        # A pull that takes a box off a target is always taken (the walk's goal is every box off
        # every target; without this preference most 3-box walks keep one box home).
        pon = []
        for d in range(4):
            bt = jnp.zeros((), bool)
            for t in t_list:
                bt = bt | (beh[d] == t)
            pon.append(pull[d] & bt)
        any_on = pon[0] | pon[1] | pon[2] | pon[3]
        do_pull = do_pull | (any_on & (s < n_steps))
        pull = [jnp.where(any_on, q, r) for q, r in zip(pon, pull)]
        # random priority (6 bits) per direction; the allowed direction of highest priority
        pr = []
        for d in range(4):
            ok = jnp.where(do_pull, pull[d], free[d]) & (s < n_steps)
            pr.append(jnp.where(ok, ((u >> (8 + 6 * d)) & 63).astype(jnp.int32) + 1, 0))
        a01 = pr[1] > pr[0]
        m01 = jnp.maximum(pr[0], pr[1])
        a23 = pr[3] > pr[2]
        m23 = jnp.maximum(pr[2], pr[3])
        hi = m23 > m01
        moved = jnp.maximum(m01, m23) > 0
        off = jnp.where(hi, jnp.where(a23, offs[3], offs[2]), jnp.where(a01, offs[1], offs[0]))
        # A player boxed in (no free neighbour) can never move again: restart the walk from the
        # solved position (still a valid reverse-play walk; the best position so far is kept).
        stuck = ~(free[0] | free[1] | free[2] | free[3]) & (s < n_steps)
        player = jnp.where(stuck, player0, player)
        boxes = [jnp.where(stuck, t, b) for t, b in zip(t_list, boxes)]
        pulls = jnp.where(stuck, 0, pulls)
        src = player - off  # where a pulled box comes from
        boxes = [jnp.where(do_pull & (b == src), player, b) for b in boxes]
        player = jnp.where(moved, player + off, player)
        pulls = pulls + do_pull.astype(jnp.int32)
        disp = jnp.zeros((), jnp.int32)
        none_on = jnp.ones((), bool)
        for i, b in enumerate(boxes):
            disp = disp + jnp.abs(b // W - t_r[i]) + jnp.abs(b % W - t_c[i])
            for t in t_list:
                none_on = none_on & (b != t)
        score = jnp.where(none_on, pulls * disp, 0)
        better = score > best[0]
        best = (jnp.where(better, score, best[0]), jnp.where(better, player, best[1]),
                [jnp.where(better, b, ob) for b, ob in zip(boxes, best[2])])
        return (player, boxes, pulls, best), None

    init = (player0, list(t_list), jnp.int32(0), (jnp.int32(0), player0, list(t_list)))
    (_, _, _, (score, player, boxes)), _ = jax.lax.scan(
        body, init, (b_walk, jnp.arange(T, dtype=jnp.int32)))
    score = jnp.where(enough_floor, score, 0)
    return ~floor, targets, jnp.stack(boxes), player, score


def default_budget(num_boxes: int) -> Tuple[int, int, int]:
    """Default search budget per box count: (attempts_per_round, max_rounds, reverse_steps).

    Chosen so the four presets keep the old generator's difficulty (mean shortest solution) with
    a fallback rate <= ~0.5% (see the module docstring); 3+ boxes get a second round, which
    under vmap only costs when some lane's first round failed."""
    nb = int(num_boxes)
    if nb <= 1:
        return 4, 1, 40
    if nb == 2:
        return 8, 1, 50
    return 8, 2, 60


def generate_level(key: jax.Array, params, dim_room: Tuple[int, int], num_boxes: int,
                   attempts_per_round: int | None = None, max_rounds: int | None = None,
                   max_topology_steps: int | None = None,
                   max_reverse_steps: int | None = None) -> Level:
    """A solvable, unsolved level (no box on a target) from `key`. Jittable, vmappable.

    `params` needs fields topology_steps, p_change_direction, reverse_steps, p_pull (traced:
    `SokobanParams` has them). Static: `dim_room`, `num_boxes`; the search budget: rounds of
    `attempts_per_round` rooms generated side by side (vmapped), at most `max_rounds` rounds
    (a `while_loop` only when > 1: under vmap it runs until the slowest lane is done), the best
    scoring room of a round kept; and the static loop lengths bounding the traced knobs:
    `params.topology_steps <= max_topology_steps` (default `default_topology_steps`),
    `params.reverse_steps <= max_reverse_steps` (extra steps are ignored). Defaults for the
    budget: `default_budget(num_boxes)`.
    """
    (H, W), nb = validate_sizes(dim_room, num_boxes)
    d_att, d_rounds, d_rev = default_budget(nb)
    attempts_per_round = int(attempts_per_round or d_att)
    max_rounds = int(max_rounds or d_rounds)
    max_reverse_steps = int(d_rev if max_reverse_steps is None else max_reverse_steps)
    if max_topology_steps is None:
        max_topology_steps = default_topology_steps((H, W), nb)
    n = H * W
    fb_walls, fb_targets, fb_boxes, fb_player = fallback_level((H, W), nb)

    def one_round(k):
        keys = jax.random.split(k, attempts_per_round)
        outs = jax.vmap(lambda k: _attempt(k, H, W, nb, max_topology_steps, max_reverse_steps,
                                           params))(keys)
        best = jnp.argmax(outs[4])  # gym-style preference: the highest score of the round
        return jax.tree.map(lambda x: x[best], outs)

    def cond(c):
        rnd, found = c[0], c[1]
        return (rnd < max_rounds) & ~found

    def body(c):
        rnd, found, walls, targets, boxes, player, score = c
        out = one_round(jax.random.fold_in(key, rnd))
        ok = out[4] > 0
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), out, (walls, targets, boxes, player, score))
        return (rnd + 1, ok) + tuple(new)

    zi = jnp.zeros((nb,), jnp.int32)
    init = (jnp.int32(0), jnp.bool_(False), jnp.zeros((n,), bool), zi, zi, jnp.int32(0), jnp.int32(0))
    if max_rounds == 1:
        walls, targets, boxes, player, score = one_round(jax.random.fold_in(key, 0))
        rounds, found = jnp.int32(1), score > 0
    else:
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
