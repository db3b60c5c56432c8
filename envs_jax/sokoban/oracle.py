"""Exact Sokoban solver: shortest solution in env steps (moves, pushes included).

Breadth-first search over (player cell, sorted box cells), one whole BFS layer at a time in
vectorised numpy on the host. Optimal because every action costs one step and BFS expands by
depth. The only pruning is exact: a box on a "dead" cell (from which no push sequence on the
empty board can bring it to any target) can never be solved, so such states are dropped.
Visited states live in a dense bitmap over state codes when it fits (<= 2**27 codes: 1-3 boxes up
to 10x10 rooms), otherwise in a sorted array.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import jax
import numpy as np

from envs_jax.sokoban.generator import DELTAS

_DENSE_LIMIT = 1 << 27


def _live_cells(floor: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cells from which a lone box can be pushed to some target (reverse pulls from targets)."""
    H, W = floor.shape
    live = targets & floor
    stack = list(zip(*np.nonzero(live)))
    while stack:
        r, c = stack.pop()
        for dr, dc in DELTAS:
            # box at (r,c) came from (r-dr, c-dc) pushed by a player at (r-2dr, c-2dc)
            r1, c1, r2, c2 = r - dr, c - dc, r - 2 * dr, c - 2 * dc
            if 0 <= r2 < H and 0 <= c2 < W and floor[r1, c1] and floor[r2, c2] and not live[r1, c1]:
                live[r1, c1] = True
                stack.append((r1, c1))
    return live


def solve(walls, targets, boxes, player) -> Optional[Tuple[int, List[int]]]:
    """Shortest solution of a level: (length, actions with 0 Up 1 Down 2 Left 3 Right), or None.

    walls, targets, boxes: bool [H, W]; player: (row, col). The room must be enclosed by walls
    (as generated levels are); cells outside the grid are treated as walls.
    """
    walls = np.asarray(walls, bool)
    targets = np.asarray(targets, bool)
    boxes = np.asarray(boxes, bool)
    H, W = walls.shape
    pr, pc = (int(x) for x in np.asarray(player).reshape(-1)[:2])
    floor = ~walls
    cells = np.argwhere(floor)
    F = len(cells)
    fidx = -np.ones((H, W), np.int64)
    fidx[floor] = np.arange(F)
    # nbr[a, i]: floor index one step in direction a from floor cell i; F (sentinel) if wall.
    nbr = np.full((4, F + 1), F, np.int64)
    for a, (dr, dc) in enumerate(DELTAS):
        r, c = cells[:, 0] + dr, cells[:, 1] + dc
        inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        rr, cc = np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)
        nbr[a, :F] = np.where(inside & floor[rr, cc], fidx[rr, cc], F)
    live = np.zeros(F + 1, bool)
    live[:F] = _live_cells(floor, targets)[floor]

    b0 = np.sort(fidx[boxes])
    goal = np.sort(fidx[targets & floor])
    nb = len(b0)
    if nb == 0 or len(goal) != nb or (b0 < 0).any() or fidx[pr, pc] < 0:
        return None
    if np.array_equal(b0, goal):
        return 0, []
    if not live[b0].all():
        return None
    powers = F ** np.arange(1, nb + 1, dtype=np.int64)  # code = p + F * b0 + F^2 * b1 + ...

    def encode(P, B):
        return P + B @ powers

    dense = F ** (nb + 1) <= _DENSE_LIMIT
    if dense:
        seen = np.zeros(F ** (nb + 1), bool)
    else:
        seen = np.zeros(0, np.int64)  # sorted

    P = np.array([fidx[pr, pc]], np.int64)
    B = b0[None, :].astype(np.int64)
    c0 = encode(P, B)
    if dense:
        seen[c0] = True
    else:
        seen = c0.copy()
    layers = []  # per depth: (parent index into previous frontier, action)
    while len(P):
        cand_P, cand_B, cand_par, cand_act = [], [], [], []
        idx = np.arange(len(P))
        for a in range(4):
            p1 = nbr[a, P]
            hit = B == p1[:, None]  # [n, nb]
            has_box = hit.any(1)
            p2 = nbr[a, p1]
            push_ok = (p2 < F) & ~(B == p2[:, None]).any(1) & live[p2]
            ok = (p1 < F) & (~has_box | push_ok)
            nB = np.where(hit, p2[:, None], B)[ok]
            nB.sort(axis=1)
            cand_P.append(p1[ok]); cand_B.append(nB); cand_par.append(idx[ok])
            cand_act.append(np.full(ok.sum(), a, np.int8))
        nP = np.concatenate(cand_P)
        nB = np.concatenate(cand_B)
        par = np.concatenate(cand_par)
        act = np.concatenate(cand_act)
        codes = encode(nP, nB)
        codes, first = np.unique(codes, return_index=True)
        if dense:
            new = ~seen[codes]
            seen[codes[new]] = True
        else:
            pos = np.searchsorted(seen, codes)
            new = ~((pos < len(seen)) & (seen[np.minimum(pos, len(seen) - 1)] == codes))
            seen = np.union1d(seen, codes[new])
        sel = first[new]
        P, B = nP[sel], nB[sel]
        layers.append((par[sel], act[sel]))
        solved = np.nonzero((B == goal[None, :]).all(1))[0]
        if len(solved):
            i = int(solved[0])
            actions = []
            for parents, acts in reversed(layers):
                actions.append(int(acts[i]))
                i = int(parents[i])
            actions.reverse()
            return len(actions), actions
    return None


def solve_state(env, state) -> Optional[Tuple[int, List[int]]]:
    """`solve` on one (unbatched) SokobanState, from its current position."""
    s = jax.device_get(state)
    return solve(s.walls, s.targets, s.boxes, s.player)


def solve_text(text: str) -> Optional[Tuple[int, List[int]]]:
    """`solve` on a text level (glyphs as in the env)."""
    from envs_jax.sokoban.env import parse_level

    return solve(*parse_level(text))
