"""Perfect-maze generation inside JAX (jittable, vmappable over keys).

Layout: a rendered grid of odd side `size` holds an `m x m` lattice of cells, m = (size - 1) / 2;
cell (r, c) sits at grid square (2r + 1, 2c + 1). The squares between two neighbouring cells are
walls unless the maze opens that edge; the even-even squares and the outer rim are always walls.
A maze is *perfect* when the opened edges form a spanning tree of the lattice (connected, no
loops: exactly m*m - 1 edges), so there is exactly one path between any two cells.

Algorithm: randomized Kruskal = the minimum spanning tree under random edge weights. The edges are
shuffled once (`jax.random.permutation`) and a `lax.scan` of fixed length E = 2m(m-1) visits them;
union-find is a *label array* [C] relabelled with one `where` per edge (O(C) work, no pointer
chasing). Why this one: every step is branch-free and of fixed cost, so under `vmap` the whole
batch advances in lockstep with no lane waiting for another. Aldous-Broder needs a random walk of
cover-time length (~C log C steps, heavy-tailed across lanes) and Wilson's loop-erased walks have
data-dependent lengths; under `vmap` a `while_loop` runs until the *slowest* lane finishes, so both
cost far more than Kruskal's exact E steps for the sizes used here (5..41).

Distances: a distance transform by iterated relaxation (four shifted minima per sweep, several
sweeps per `while_loop` iteration) that stops when nothing changes. `cell_distances` runs it on the
m x m cell lattice (8x cheaper than the grid) for start/goal placement ("farthest", "diameter")
and, via `grid_distances_to_cell`, for the oracle; `bfs_distances` is the generic grid version.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from envs_jax.core import EnvError

GOAL_PLACEMENTS = ("random", "farthest", "diameter")
UNREACHED = np.int32(1 << 20)  # distance of squares not reachable (walls included)
_SWEEPS_PER_ITER = 4  # relaxation sweeps per while_loop iteration (fewer loop round-trips)


def check_size(size: int) -> int:
    """Validate a maze side: odd and >= 5 (a 2x2 cell lattice), else `EnvError`."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise EnvError(f"Maze size must be an odd int >= 5, got {size!r}")
    size = int(size)
    if size < 5 or size % 2 == 0:
        raise EnvError(f"Maze size must be odd and >= 5 (a (size-1)/2 square cell lattice), got {size}")
    return size


@lru_cache(maxsize=None)
def lattice(size: int) -> Tuple[np.ndarray, ...]:
    """Static edge tables of the cell lattice (numpy, cached per size).

    Returns (u [E], v [E], wall_r [E], wall_c [E], cell_r [C], cell_c [C]): edge endpoints as cell
    ids r*m + c, the grid square between them, and each cell's grid square.
    """
    m = (size - 1) // 2
    u, v, wr, wc = [], [], [], []
    for r in range(m):
        for c in range(m):
            if c + 1 < m:  # horizontal edge (r,c)-(r,c+1)
                u.append(r * m + c); v.append(r * m + c + 1)
                wr.append(2 * r + 1); wc.append(2 * c + 2)
            if r + 1 < m:  # vertical edge (r,c)-(r+1,c)
                u.append(r * m + c); v.append((r + 1) * m + c)
                wr.append(2 * r + 2); wc.append(2 * c + 1)
    cells = np.arange(m * m)
    arr = lambda x: np.asarray(x, np.int32)
    return arr(u), arr(v), arr(wr), arr(wc), arr(2 * (cells // m) + 1), arr(2 * (cells % m) + 1)


def generate_walls(key: jax.Array, size: int) -> jax.Array:
    """A random perfect maze: bool [size, size], True = wall. Randomized Kruskal (see module doc)."""
    u, v, wr, wc, cr, cc = lattice(size)
    num_cells = cr.shape[0]
    order = jax.random.permutation(key, u.shape[0])  # [E] shuffled edge ids

    def visit(labels, uv):  # labels [C]: component id of each cell; uv: the edge's two cells
        a, b = labels[uv[0]], labels[uv[1]]
        join = a != b
        labels = jnp.where(join & (labels == b), a, labels)
        return labels, join

    edges = jnp.stack([jnp.asarray(u)[order], jnp.asarray(v)[order]], axis=1)  # [E, 2] shuffled
    _, joined = jax.lax.scan(visit, jnp.arange(num_cells, dtype=jnp.int32), edges)  # [E] in order
    opened = jnp.zeros((u.shape[0],), bool).at[order].set(joined)  # [E] by edge id
    walls = jnp.ones((size, size), bool).at[cr, cc].set(False)
    return walls.at[wr, wc].set(~opened)


def bfs_distances(walls: jax.Array, source: jax.Array) -> jax.Array:
    """Shortest-path length (in moves) from `source` (int32 [2]) to every open square.

    walls: bool [H, W] with a wall rim. Returns int32 [H, W]; walls and unreachable squares hold
    `UNREACHED`. A fixed-cost relaxation repeated until nothing changes (bounded by H*W sweeps).
    """
    h, w = walls.shape
    inf = jnp.int32(UNREACHED)
    dist = jnp.full((h, w), inf, jnp.int32).at[source[0], source[1]].set(0)

    def sweep(d):
        # Neighbour minima by shifting with inf padding (no wrap-around).
        up = jnp.concatenate([d[1:], jnp.full((1, w), inf)], axis=0)  # d[r+1, c]
        dn = jnp.concatenate([jnp.full((1, w), inf), d[:-1]], axis=0)  # d[r-1, c]
        lf = jnp.concatenate([d[:, 1:], jnp.full((h, 1), inf)], axis=1)  # d[r, c+1]
        rt = jnp.concatenate([jnp.full((h, 1), inf), d[:, :-1]], axis=1)  # d[r, c-1]
        best = jnp.minimum(jnp.minimum(up, dn), jnp.minimum(lf, rt)) + 1
        return jnp.where(walls, inf, jnp.minimum(d, best))

    def body(carry):
        d, _, it = carry
        new = d
        for _ in range(_SWEEPS_PER_ITER):
            new = sweep(new)
        return new, jnp.any(new != d), it + 1

    def cond(carry):
        _, changed, it = carry
        return changed & (it * _SWEEPS_PER_ITER < h * w)

    dist, _, _ = jax.lax.while_loop(cond, body, (dist, jnp.bool_(True), jnp.int32(0)))
    return dist


def _cell_square(cell: jax.Array, size: int) -> jax.Array:
    m = (size - 1) // 2
    return jnp.stack([2 * (cell // m) + 1, 2 * (cell % m) + 1]).astype(jnp.int32)


def cell_distances(walls: jax.Array, source: jax.Array) -> jax.Array:
    """Moves between cells (one cell move = two grid moves) from the cell at grid square `source`.

    walls: bool [size, size] in the lattice layout (see module doc); source: int32 [2], a cell
    square (odd, odd). Returns int32 [m, m], `UNREACHED` where disconnected. The same relaxation as
    `bfs_distances` on the m x m cell lattice: 4x fewer squares and half the sweeps.
    """
    size = walls.shape[0]
    m = (size - 1) // 2
    inf = jnp.int32(UNREACHED)
    right = ~walls[1:size - 1:2, 2:size - 1:2]  # [m, m-1]: edge (r,c)-(r,c+1) open
    down = ~walls[2:size - 1:2, 1:size - 1:2]  # [m-1, m]: edge (r,c)-(r+1,c) open
    col_inf = jnp.full((m, 1), inf)
    row_inf = jnp.full((1, m), inf)
    dist = jnp.full((m, m), inf, jnp.int32).at[source[0] // 2, source[1] // 2].set(0)

    def sweep(d):
        from_right = jnp.concatenate([jnp.where(right, d[:, 1:], inf), col_inf], axis=1)
        from_left = jnp.concatenate([col_inf, jnp.where(right, d[:, :-1], inf)], axis=1)
        from_down = jnp.concatenate([jnp.where(down, d[1:], inf), row_inf], axis=0)
        from_up = jnp.concatenate([row_inf, jnp.where(down, d[:-1], inf)], axis=0)
        best = jnp.minimum(jnp.minimum(from_right, from_left), jnp.minimum(from_down, from_up))
        return jnp.minimum(d, best + 1)

    def body(carry):
        d, _, it = carry
        new = d
        for _ in range(_SWEEPS_PER_ITER):
            new = sweep(new)
        return new, jnp.any(new != d), it + 1

    def cond(carry):
        _, changed, it = carry
        return changed & (it * _SWEEPS_PER_ITER < m * m)

    dist, _, _ = jax.lax.while_loop(cond, body, (dist, jnp.bool_(True), jnp.int32(0)))
    return dist


def grid_distances_to_cell(walls: jax.Array, target: jax.Array) -> jax.Array:
    """Grid moves from every square to the cell square `target`: int32 [size, size].

    Built from `cell_distances`: a cell square is 2 * (cell distance); an open passage square
    between two cells is 1 + 2 * (the nearer cell's distance); walls are `UNREACHED`.
    """
    size = walls.shape[0]
    dc = cell_distances(walls, target)  # [m, m]
    inf = jnp.int32(UNREACHED)
    d2 = jnp.where(dc < inf, 2 * dc, inf)
    grid = jnp.full((size, size), inf, jnp.int32)
    grid = grid.at[1::2, 1::2].set(d2)
    horiz = jnp.minimum(d2[:, :-1], d2[:, 1:]) + 1  # passages (2r+1, 2c+2)
    vert = jnp.minimum(d2[:-1], d2[1:]) + 1  # passages (2r+2, 2c+1)
    grid = grid.at[1:size - 1:2, 2:size - 1:2].set(horiz)
    grid = grid.at[2:size - 1:2, 1:size - 1:2].set(vert)
    return jnp.where(walls | (grid >= inf), inf, grid)


def _farthest_cell_square(walls: jax.Array, source: jax.Array, size: int) -> jax.Array:
    """The cell square farthest from `source` (first in row-major order on ties)."""
    d = cell_distances(walls, source).reshape(-1)  # [C]
    return _cell_square(jnp.argmax(d).astype(jnp.int32), size)


def place_start_goal(key: jax.Array, walls: jax.Array, size: int, goal_placement: str):
    """Start and goal cell squares (int32 [2] each), always distinct cells.

    "random": two distinct cells uniformly; "farthest": random start, goal = the cell farthest from
    it; "diameter": a longest path of the tree (double BFS sweep), in a random direction.
    """
    m = (size - 1) // 2
    num_cells = m * m
    k1, k2, k3 = jax.random.split(key, 3)
    s = jax.random.randint(k1, (), 0, num_cells)
    start = _cell_square(s, size)
    if goal_placement == "random":
        g = jax.random.randint(k2, (), 0, num_cells - 1)
        g = g + (g >= s)  # distinct from s, uniform over the others
        return start, _cell_square(g, size)
    if goal_placement == "farthest":
        return start, _farthest_cell_square(walls, start, size)
    if goal_placement == "diameter":
        a = _farthest_cell_square(walls, start, size)
        b = _farthest_cell_square(walls, a, size)
        flip = jax.random.bernoulli(k3)
        return jnp.where(flip, b, a), jnp.where(flip, a, b)
    raise EnvError(f"goal_placement must be one of {GOAL_PLACEMENTS}, got {goal_placement!r}")


def generate(key: jax.Array, size: int, goal_placement: str = "random"):
    """One level: (walls bool [size, size], start int32 [2], goal int32 [2])."""
    k_maze, k_place = jax.random.split(key)
    walls = generate_walls(k_maze, size)
    start, goal = place_start_goal(k_place, walls, size, goal_placement)
    return walls, start, goal
