"""Taxi map layouts in Gymnasium's text format, and deterministic larger maps for transfer.

A map is a list of strings like Gymnasium's Taxi-v3 `MAP`:

    +---------+
    |R: | : :G|      row r of cells is line 1 + r; cell (r, c) is at column 2c + 1;
    | : | : : |      the character at column 2c + 2 is `:` (open) or `|` (wall) between
    | : : : : |      cells (r, c) and (r, c + 1). There are no north/south walls inside the
    | | : | : |      grid (as in Taxi-v3), only the border.
    |Y| : |B: |
    +---------+

Letters in cells are pick-up/drop-off sites; their indices follow row-major order (for Taxi-v3:
R(0,0)=0, G(0,4)=1, Y(4,0)=2, B(4,3)=3, exactly Gymnasium's `locs`).

Named maps: "5x5" (Gymnasium's), and generated "7x7" (6 sites) and "10x10" (8 sites), made by
`generate_map` from fixed seeds and verified connected.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np

from envs_jax.core import EnvError

TAXI_V3_MAP = (
    "+---------+",
    "|R: | : :G|",
    "| : | : : |",
    "| : : : : |",
    "| | : | : |",
    "|Y| : |B: |",
    "+---------+",
)

# Site letters, in the order sites are named (row-major). Avoids the taxi/passenger glyph letters
# T F P D A E H W (see env.py).
SITE_LETTERS = "RGYBCMKVNO"

# name -> (rows, cols, num_sites, wall_prob, seed) for generated maps.
GENERATED = {
    "7x7": (7, 7, 6, 0.25, 7),
    "10x10": (10, 10, 8, 0.25, 10),
}


def parse_map(desc: Sequence[str]) -> Tuple[int, int, np.ndarray, np.ndarray, List[Tuple[int, int]], str]:
    """Check and parse a map. Returns (rows, cols, east_open bool [rows, cols],
    west_open bool [rows, cols], sites [(row, col)] row-major, site letters)."""
    desc = [str(line) for line in desc]
    if len(desc) < 3:
        raise EnvError("Taxi map needs a top border, at least one row, and a bottom border")
    width = len(desc[0])
    if width < 3 or width % 2 == 0 or any(len(line) != width for line in desc):
        raise EnvError("Taxi map lines must all have the same odd length 2*cols+1")
    rows, cols = len(desc) - 2, (width - 1) // 2
    border = "+" + "-" * (width - 2) + "+"
    if desc[0] != border or desc[-1] != border:
        raise EnvError(f"Taxi map must start and end with the border {border!r}")
    east = np.zeros((rows, cols), bool)
    west = np.zeros((rows, cols), bool)
    sites, letters = [], ""
    for r in range(rows):
        line = desc[1 + r]
        if line[0] != "|" or line[-1] != "|":
            raise EnvError(f"Taxi map row {r} must start and end with '|': {line!r}")
        for c in range(cols):
            ch = line[2 * c + 1]
            if ch.isalpha():
                sites.append((r, c)); letters += ch
            elif ch != " ":
                raise EnvError(f"Taxi map cell ({r},{c}) must be ' ' or a site letter, got {ch!r}")
            east[r, c] = line[2 * c + 2] == ":"
            west[r, c] = line[2 * c] == ":"
        for c in range(cols + 1):
            if line[2 * c] not in ":|":
                raise EnvError(f"Taxi map separator at row {r}, column {2 * c} must be ':' or '|'")
    if len(sites) < 2:
        raise EnvError("Taxi map needs at least two sites (letters)")
    if len(set(letters)) != len(letters):
        raise EnvError(f"Taxi map site letters must be distinct, got {letters!r}")
    return rows, cols, east, west, sites, letters


def is_connected(desc: Sequence[str]) -> bool:
    """Host BFS over cells: every cell reachable from (0, 0)."""
    rows, cols, east, west, _, _ = parse_map(desc)
    seen = np.zeros((rows, cols), bool)
    seen[0, 0] = True
    stack = [(0, 0)]
    while stack:
        r, c = stack.pop()
        nbrs = [(r + 1, c), (r - 1, c)]
        if east[r, c]:
            nbrs.append((r, c + 1))
        if west[r, c]:
            nbrs.append((r, c - 1))
        for nr, nc in nbrs:
            if 0 <= nr < rows and 0 <= nc < cols and not seen[nr, nc]:
                seen[nr, nc] = True
                stack.append((nr, nc))
    return bool(seen.all())


def generate_map(rows: int, cols: int, num_sites: int, wall_prob: float = 0.25, seed: int = 0) -> Tuple[str, ...]:
    """A deterministic Taxi map: random east-west walls (each inner separator a wall with
    `wall_prob`), sites at the four corners then random distinct cells, redrawn until connected."""
    if rows < 2 or cols < 2:
        raise EnvError(f"Taxi map must be at least 2x2, got {rows}x{cols}")
    if not 2 <= num_sites <= min(len(SITE_LETTERS), rows * cols):
        raise EnvError(f"Taxi num_sites must be in [2, {min(len(SITE_LETTERS), rows * cols)}], got {num_sites}")
    rng = np.random.RandomState(seed)
    for _ in range(1000):
        wall = rng.random_sample((rows, cols - 1)) < wall_prob  # wall between (r,c) and (r,c+1)
        corners = [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1)]
        others = [(r, c) for r in range(rows) for c in range(cols) if (r, c) not in corners]
        extra = [others[i] for i in rng.permutation(len(others))[: max(0, num_sites - 4)]]
        chosen = sorted((corners + extra)[:num_sites])  # row-major
        cells = [[" "] * cols for _ in range(rows)]
        for i, (r, c) in enumerate(chosen):
            cells[r][c] = SITE_LETTERS[i]
        lines = ["+" + "-" * (2 * cols - 1) + "+"]
        for r in range(rows):
            line = "|"
            for c in range(cols):
                line += cells[r][c] + ("|" if c == cols - 1 or wall[r, c] else ":")
            lines.append(line)
        lines.append(lines[0])
        if is_connected(lines):
            return tuple(lines)
    raise EnvError("could not generate a connected Taxi map")  # pragma: no cover


@lru_cache(maxsize=None)
def named_map(name: str) -> Tuple[str, ...]:
    """The map called `name`: "5x5" (Gymnasium Taxi-v3) or a generated one ("7x7", "10x10")."""
    if name in ("5x5", "taxi-v3", "Taxi-v3"):
        return TAXI_V3_MAP
    if name in GENERATED:
        return generate_map(*GENERATED[name])
    raise EnvError(f"unknown Taxi map {name!r}; known maps: {available_maps()}")


def available_maps() -> List[str]:
    return ["5x5"] + list(GENERATED)


MAPS: Dict[str, Tuple[str, ...]] = {"5x5": TAXI_V3_MAP}  # generated ones via named_map()
