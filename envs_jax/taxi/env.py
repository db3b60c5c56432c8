"""Taxi: Gymnasium's Taxi-v3 (Taxi-v4 in gymnasium >= 1.3, same table) as a pure-JAX environment.

Dynamics are a precomputed transition table built on the host from the map, with exactly
Gymnasium's rules (its `_build_dry_transitions`), generalised to any map of `maps.py`:
  0 South, 1 North (clamped at the border, no inner north/south walls), 2 East, 3 West (blocked
  by `|`), 4 Pickup (legal iff the passenger waits at the taxi's site: passenger -> in taxi),
  5 Dropoff (passenger in taxi at the destination: +20 and the episode ends; in taxi at another
  site: the passenger is set down there, -1; otherwise illegal).
Rewards: -1 per step, +20 correct drop-off, -10 illegal pickup/drop-off (params, to rescale).
State index (Gymnasium's encoding, generalised to K sites):
  ((row * cols + col) * (K + 1) + passenger) * K + destination, passenger K = in the taxi.
Start: taxi uniform on all cells, passenger uniform on the K sites, destination uniform on the
other K - 1 sites (Gymnasium's 300 initial states on 5x5). `step_env` is three table gathers.
An action is effective iff the state index changed.

Rendering: Gymnasium's ANSI layout, [rows + 2, 2 * cols + 1] glyphs (7 x 11 on 5x5):

    +---------+    `+` corner, `-` border, `|` wall (or side border), `:` no wall,
    |R:_|_:_:D|    `_` road, `R` `G` `Y` `B` (more on big maps) a site with nothing on it,
    |_:_|_:_:_|    `P` passenger waiting at a site, `D` destination site,
    |_:_:T:_:_|    `T` empty taxi, `F` taxi carrying the passenger,
    |_|_:_|_:_|    `A` empty taxi at the waiting passenger (pickup is legal),
    |P|_:_|B:_|    `E` empty taxi at the destination, `H` full taxi at the destination
    +---------+    (drop-off wins), `W` passenger delivered at the destination.

Every state reachable in an episode is decodable from its rendering (the taxi covers a plain site
letter; the fixed site positions are listed in `rules_text`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, StepInfo, EnvError
from envs_jax.taxi import maps

ACTIONS = ("South", "North", "East", "West", "Pickup", "Dropoff")
# Reward kinds in the table; params map them to values.
STEP, ILLEGAL, DELIVER = 0, 1, 2
FIXED_GLYPHS = ("+", "-", "|", ":", "_")
FIXED_MEANINGS = ("corner", "border", "wall (no east/west move across it)",
                  "no wall (east/west move allowed)", "road")
TAXI_GLYPHS = ("T", "F", "P", "D", "A", "E", "H", "W")
TAXI_MEANINGS = ("empty taxi", "taxi carrying the passenger", "passenger waiting at a site",
                 "destination site", "empty taxi at the waiting passenger",
                 "empty taxi at the destination", "taxi with the passenger at the destination",
                 "passenger delivered at the destination (the taxi is here unless shown elsewhere)")


@struct.dataclass
class TaxiParams:
    max_steps: int = 200  # truncation, as Gymnasium's TimeLimit for Taxi-v3
    step_reward: float = -1.0  # every move, and legal pickups / wrong-site drop-offs
    illegal_reward: float = -10.0  # pickup or drop-off that is not allowed
    deliver_reward: float = 20.0  # drop-off at the destination (ends the episode)


@struct.dataclass
class TaxiState:
    taxi_row: jax.Array  # int32 []
    taxi_col: jax.Array  # int32 []
    passenger: jax.Array  # int32 [] site index, or num_sites = in the taxi
    destination: jax.Array  # int32 [] site index
    step_count: jax.Array  # int32 []


@lru_cache(maxsize=None)
def build_tables(desc: Tuple[str, ...]):
    """Host-side transition table of a map (numpy, cached).

    Returns (next_state int32 [S, 6], reward_kind int8 [S, 6], terminal bool [S, 6],
    initial bool [S]) following Gymnasium's `_build_dry_transitions` line by line.
    """
    rows, cols, east, west, sites, _ = maps.parse_map(desc)
    k = len(sites)
    num_states = rows * cols * (k + 1) * k
    nxt = np.zeros((num_states, 6), np.int32)
    kind = np.zeros((num_states, 6), np.int8)
    term = np.zeros((num_states, 6), bool)
    init = np.zeros((num_states,), bool)
    encode = lambda r, c, p, d: ((r * cols + c) * (k + 1) + p) * k + d
    for r in range(rows):
        for c in range(cols):
            for p in range(k + 1):
                for d in range(k):
                    s = encode(r, c, p, d)
                    init[s] = p < k and p != d
                    for a in range(6):
                        nr, nc, np_, kd, done = r, c, p, STEP, False
                        if a == 0:
                            nr = min(r + 1, rows - 1)
                        elif a == 1:
                            nr = max(r - 1, 0)
                        if a == 2 and east[r, c]:
                            nc = min(c + 1, cols - 1)
                        elif a == 3 and west[r, c]:
                            nc = max(c - 1, 0)
                        elif a == 4:
                            if p < k and (r, c) == sites[p]:
                                np_ = k
                            else:
                                kd = ILLEGAL
                        elif a == 5:
                            if (r, c) == sites[d] and p == k:
                                np_, kd, done = d, DELIVER, True
                            elif (r, c) in sites and p == k:
                                np_ = sites.index((r, c))
                            else:
                                kd = ILLEGAL
                        nxt[s, a] = encode(nr, nc, np_, d)
                        kind[s, a] = kd
                        term[s, a] = done
    return nxt, kind, term, init


class Taxi(Environment[TaxiState, TaxiParams]):
    """`Taxi(map="5x5")`: Gymnasium Taxi-v3 by default; "7x7" / "10x10" are generated maps
    (see `maps.py`), or pass a map as a sequence of strings in Gymnasium's format."""

    action_names = ACTIONS

    def __init__(self, map: Union[str, Sequence[str]] = "5x5"):
        if isinstance(map, str):
            desc = maps.named_map(map)
            self.map_name = map
        else:
            desc = tuple(str(line) for line in map)
            self.map_name = "custom"
        self.rows, self.cols, east, _, self.sites, self.site_letters = maps.parse_map(desc)
        if not maps.is_connected(desc):
            raise EnvError("Taxi map is not connected")
        bad = sorted(set(self.site_letters) & set(TAXI_GLYPHS + FIXED_GLYPHS))
        if bad:
            raise EnvError(f"Taxi site letters {bad} clash with taxi/passenger glyphs {TAXI_GLYPHS}")
        self.desc = desc
        self.num_sites = k = len(self.sites)
        self.num_states = self.rows * self.cols * (k + 1) * k
        nxt, kind, term, init = build_tables(desc)
        self.next_state_table, self.reward_kind_table, self.terminal_table = nxt, kind, term
        self.initial_states = np.flatnonzero(init)  # int [num initial states]
        self._next = jnp.asarray(nxt)  # int32 [S, 6]
        self._kind = jnp.asarray(kind.astype(np.int32))  # int32 [S, 6]
        self._term = jnp.asarray(term)  # bool [S, 6]

        self.name = "Taxi" if self.map_name == "5x5" else f"Taxi-{self.map_name}"
        self.glyphs = FIXED_GLYPHS + tuple(self.site_letters) + TAXI_GLYPHS
        self.glyph_meanings = (FIXED_MEANINGS
                               + tuple(f"site {ch} (pick-up/drop-off)" for ch in self.site_letters)
                               + TAXI_MEANINGS)
        self.grid_shape = (self.rows + 2, 2 * self.cols + 1)
        gid = {g: i for i, g in enumerate(self.glyphs)}
        self._gid = gid
        base = np.array([[gid["_" if ch == " " else ch] for ch in line] for line in desc], np.int32)
        self._base = jnp.asarray(base)  # int32 [rows + 2, 2 * cols + 1]
        site_of_cell = -np.ones((self.rows, self.cols), np.int32)
        for i, (r, c) in enumerate(self.sites):
            site_of_cell[r, c] = i
        self._site_of_cell = jnp.asarray(site_of_cell)  # int32 [rows, cols], -1 = no site
        sites_txt = ", ".join(f"{ch}{rc}" for ch, rc in zip(self.site_letters, self.sites))
        self.rules_text = (
            f"Taxi on a {self.rows}x{self.cols} grid (row 0 at the top). Sites (row, col): {sites_txt}. "
            "Drive the taxi to the passenger (P), Pickup, drive to the destination (D) and Dropoff. "
            "South/North/East/West move one cell; `|` walls block East/West moves, the border blocks "
            "all. Each step costs -1; an illegal Pickup/Dropoff costs -10; delivering gives +20 "
            "and ends the episode. Dropping the passenger at another site leaves them waiting there."
        )
        self.max_solution_length = int(self._host_distances().max())

    # ---- encoding --------------------------------------------------------------------------
    def state_index(self, state: TaxiState) -> jax.Array:
        """Gymnasium's observation integer (int32 []), generalised to K sites."""
        k = self.num_sites
        return ((state.taxi_row * self.cols + state.taxi_col) * (k + 1) + state.passenger) * k + state.destination

    def state_from_index(self, index, step_count=0) -> TaxiState:
        """Inverse of `state_index` (jittable)."""
        k = self.num_sites
        i = jnp.asarray(index, jnp.int32)
        dest = i % k
        i = i // k
        passenger = i % (k + 1)
        i = i // (k + 1)
        return TaxiState(taxi_row=i // self.cols, taxi_col=i % self.cols, passenger=passenger,
                         destination=dest, step_count=jnp.asarray(step_count, jnp.int32))

    # ---- environment -----------------------------------------------------------------------
    @property
    def default_params(self) -> TaxiParams:
        return TaxiParams()

    def reset_env(self, key: jax.Array, params: TaxiParams) -> Tuple[jax.Array, TaxiState]:
        k = self.num_sites
        k_cell, k_pass, k_dest = jax.random.split(key, 3)
        cell = jax.random.randint(k_cell, (), 0, self.rows * self.cols)
        passenger = jax.random.randint(k_pass, (), 0, k)
        dest = jax.random.randint(k_dest, (), 0, k - 1)
        dest = dest + (dest >= passenger)  # uniform over the sites other than the passenger's
        state = TaxiState(taxi_row=(cell // self.cols).astype(jnp.int32),
                          taxi_col=(cell % self.cols).astype(jnp.int32),
                          passenger=passenger.astype(jnp.int32), destination=dest.astype(jnp.int32),
                          step_count=jnp.int32(0))
        return self.render_glyphs(state), state

    def step_env(self, key, state: TaxiState, action, params: TaxiParams):
        s = self.state_index(state)
        ns = self._next[s, action]
        kind = self._kind[s, action]
        success = self._term[s, action]
        rewards = jnp.stack([jnp.asarray(params.step_reward, jnp.float32),
                             jnp.asarray(params.illegal_reward, jnp.float32),
                             jnp.asarray(params.deliver_reward, jnp.float32)])
        reward = rewards[kind]
        step_count = state.step_count + 1
        truncated = (step_count >= params.max_steps) & ~success
        new_state = self.state_from_index(ns, step_count)
        info = StepInfo(effective=ns != s, success=success, truncated=truncated)
        return self.render_glyphs(new_state), new_state, reward, success | truncated, info

    def render_glyphs(self, state: TaxiState) -> jax.Array:
        # int32 [rows + 2, 2 * cols + 1]: the static map with the cell layer overlaid.
        g = self._gid
        k = self.num_sites
        rr = jnp.arange(self.rows, dtype=jnp.int32)[:, None]
        cc = jnp.arange(self.cols, dtype=jnp.int32)[None, :]
        taxi = (rr == state.taxi_row) & (cc == state.taxi_col)  # [rows, cols]
        full = state.passenger == k
        pas = (self._site_of_cell == state.passenger) & ~full
        dst = self._site_of_cell == state.destination
        base_cells = self._base[1:-1, 1::2]  # [rows, cols]
        no_taxi = jnp.where(pas & dst, g["W"], jnp.where(pas, g["P"], jnp.where(dst, g["D"], base_cells)))
        empty_taxi = jnp.where(pas & dst, g["W"], jnp.where(pas, g["A"], jnp.where(dst, g["E"], g["T"])))
        full_taxi = jnp.where(dst, g["H"], g["F"])
        cells = jnp.where(taxi, jnp.where(full, full_taxi, empty_taxi), no_taxi)
        seps = self._base[1:-1, 2::2]  # [rows, cols]: separator right of each cell
        inner = jnp.stack([cells, seps], axis=-1).reshape(self.rows, 2 * self.cols)
        middle = jnp.concatenate([self._base[1:-1, :1], inner], axis=1)
        return jnp.concatenate([self._base[:1], middle, self._base[-1:]], axis=0).astype(jnp.int32)

    def enumerate_grids(self) -> np.ndarray:
        """The rendering of every state index (int32 [num_states, rows + 2, 2 * cols + 1]): every
        grid Taxi shows (the delivered `W` included: passenger and destination on one site).
        Rendered once per instance (read-only): the codec and the conversation checks both ask."""
        if getattr(self, "_all_grids", None) is None:
            states = jax.vmap(self.state_from_index)(jnp.arange(self.num_states, dtype=jnp.int32))
            grids = np.array(jax.jit(jax.vmap(self.render_glyphs))(states))
            grids.flags.writeable = False
            self._all_grids = grids
        return self._all_grids

    # ---- host helpers ----------------------------------------------------------------------
    def _host_distances(self) -> np.ndarray:
        """Host BFS: steps to finish from every state (int [S]); used for static bounds/tests."""
        nxt, term = self.next_state_table, self.terminal_table
        inf = np.iinfo(np.int32).max // 2
        d = np.full(self.num_states, inf, np.int64)
        while True:
            cost = np.where(term, 1, 1 + d[nxt])  # [S, 6]
            new = np.minimum(d, cost.min(axis=1))
            if np.array_equal(new, d):
                return d
            d = new
