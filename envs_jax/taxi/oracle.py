"""Taxi oracle: shortest plan to a successful drop-off by BFS over the whole state space.

The state space is tiny (500 states on 5x5, 7200 on 10x10), so the distance-to-finish of *every*
state is computed in-graph from the transition table by vectorised relaxation
`d[s] = min_a (1 if a delivers else 1 + d[next[s, a]])` in a `while_loop` (a backward BFS: all
steps cost 1). It does not depend on the episode, so under `vmap` it is computed once.
`solve(env, state)` -> (length int32 [], actions int32 [env.max_solution_length]): the first
`length` actions are optimal (ties broken by the lowest action index), the rest are padding -1.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from envs_jax.taxi.env import Taxi, TaxiState

PAD = -1
_INF = 1 << 20


def distances(env: Taxi) -> jax.Array:
    """int32 [S]: the fewest steps from each state to a successful drop-off (jittable)."""
    nxt, term = env._next, env._term  # [S, 6]

    def relax(d):
        cost = jnp.where(term, 1, 1 + d[nxt])  # [S, 6]
        return jnp.minimum(d, jnp.min(cost, axis=1))

    def body(carry):
        d, _ = carry
        new = relax(d)
        return new, jnp.any(new != d)

    d0 = jnp.full((env.num_states,), _INF, jnp.int32)
    d, _ = jax.lax.while_loop(lambda c: c[1], body, (d0, jnp.bool_(True)))
    return d


def solve(env: Taxi, state: TaxiState) -> Tuple[jax.Array, jax.Array]:
    """Optimal length and plan from `state` (see module doc)."""
    dist = distances(env)
    nxt, term = env._next, env._term

    def walk(carry, _):
        s, finished = carry
        cost = jnp.where(term[s], 1, 1 + dist[nxt[s]])  # [6]
        a = jnp.argmin(cost).astype(jnp.int32)
        act = jnp.where(finished, PAD, a)
        return (jnp.where(finished, s, nxt[s, a]), finished | term[s, a]), act

    s0 = env.state_index(state)
    _, actions = jax.lax.scan(walk, (s0, jnp.bool_(False)), None, length=env.max_solution_length)
    return dist[s0], actions
