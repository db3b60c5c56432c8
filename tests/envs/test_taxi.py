"""Taxi: identical to Gymnasium's Taxi-v3 table; generated maps; oracle optimality; rendering."""

from collections import deque

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.core import EnvError
from envs_jax.taxi import Taxi, TaxiParams, maps, solve

gym = pytest.importorskip("gymnasium")


def _gym_taxi():
    # Gymnasium >= 1.3 registers Taxi-v3's table as Taxi-v4.
    name = "Taxi-v4" if "Taxi-v4" in gym.envs.registry else "Taxi-v3"
    return gym.make(name).unwrapped


def _all_state_actions(env):
    s = jnp.repeat(jnp.arange(env.num_states, dtype=jnp.int32), 6)
    a = jnp.tile(jnp.arange(6, dtype=jnp.int32), env.num_states)
    return s, a


def _step_all(env, params):
    s, a = _all_state_actions(env)

    def one(i, act):
        st = env.state_from_index(i)
        _, nst, r, d, info = env.step_env(None, st, act, params)
        return env.state_index(nst), r, d, info

    return jax.jit(jax.vmap(one))(s, a)


def test_equals_gymnasium_table():
    genv = _gym_taxi()
    env = Taxi()
    assert env.num_states == 500 and env.grid_shape == (7, 11)
    assert env.action_names == ("South", "North", "East", "West", "Pickup", "Dropoff")
    ns, r, d, info = _step_all(env, env.default_params)
    ns, r, d = (np.asarray(x).reshape(500, 6) for x in (ns, r, d))
    success = np.asarray(info.success).reshape(500, 6)
    effective = np.asarray(info.effective).reshape(500, 6)
    for s in range(500):
        for a in range(6):
            (p, s2, r2, t2), = genv.P[s][a]
            assert (ns[s, a], r[s, a], d[s, a], success[s, a]) == (s2, r2, t2, t2), (s, a)
            assert effective[s, a] == (s2 != s)
    # A wrong-site drop-off with the passenger aboard sets the passenger down there (Gymnasium >= 0.26).
    s = genv.encode(0, 4, 4, 2)  # taxi at G, passenger in taxi, destination Y
    assert genv.P[s][5][0][1] == genv.encode(0, 4, 1, 2)


def test_encoding_roundtrip_and_gym_decode():
    genv = _gym_taxi()
    env = Taxi()
    idx = jnp.arange(500, dtype=jnp.int32)
    st = jax.vmap(env.state_from_index)(idx)
    np.testing.assert_array_equal(np.asarray(jax.vmap(env.state_index)(st)), np.arange(500))
    for i in (0, 17, 123, 321, 499):
        assert tuple(int(x) for x in (st.taxi_row[i], st.taxi_col[i], st.passenger[i],
                                      st.destination[i])) == tuple(genv.decode(i))


def test_initial_state_distribution_support():
    genv = _gym_taxi()
    env = Taxi()
    keys = jax.random.split(jax.random.key(0), 20000)
    idx = jax.jit(jax.vmap(lambda k: env.state_index(env.reset_env(k, env.default_params)[1])))(keys)
    counts = np.bincount(np.asarray(idx), minlength=500)
    support = genv.initial_state_distrib > 0
    np.testing.assert_array_equal(counts > 0, support)
    assert support.sum() == 300
    # roughly uniform: each of the 300 states expects ~66.7 samples
    assert counts[support].min() > 25 and counts[support].max() < 120


def _host_bfs_lengths(env):
    """Backward BFS on the host over the numpy table: steps to finish from every state."""
    nxt, term = env.next_state_table, env.terminal_table
    preds = [[] for _ in range(env.num_states)]
    for s in range(env.num_states):
        for a in range(6):
            if not term[s, a]:
                preds[nxt[s, a]].append(s)
    dist = np.full(env.num_states, -1)
    q = deque()
    for s in np.flatnonzero(term.any(axis=1)):
        dist[s] = 1
        q.append(s)
    while q:
        s = q.popleft()
        for p in preds[s]:
            if dist[p] < 0:
                dist[p] = dist[s] + 1
                q.append(p)
    return dist


@pytest.mark.parametrize("map_name", ("5x5", "7x7"))
def test_oracle_optimal_and_plans_succeed(map_name):
    env = Taxi(map_name)
    params = env.default_params
    idx = jnp.arange(env.num_states, dtype=jnp.int32)
    if env.num_states > 1000:
        idx = idx[:: env.num_states // 500]

    @jax.jit
    def run(i):
        st = env.state_from_index(i)
        length, plan = solve(env, st)

        def body(s, a):
            _, ns, r, d, info = env.step_env(None, s, jnp.maximum(a, 0), params)
            live = a >= 0
            ns = jax.tree.map(lambda x, y: jnp.where(live, x, y), ns, s)
            return ns, (info.success & live, d & live, live)

        _, (succ, done, live) = jax.lax.scan(body, st, plan)
        return length, plan, succ, done, live

    length, plan, succ, done, live = jax.vmap(run)(idx)
    host = _host_bfs_lengths(env)[np.asarray(idx)]
    np.testing.assert_array_equal(np.asarray(length), host)
    assert env.max_solution_length == host.max() or env.num_states > 1000
    L = np.asarray(length)
    np.testing.assert_array_equal(np.asarray(live).sum(axis=1), L)
    np.testing.assert_array_equal(np.asarray(succ).sum(axis=1), 1)
    np.testing.assert_array_equal(np.argmax(np.asarray(succ), axis=1), L - 1)
    np.testing.assert_array_equal(np.asarray(done), np.asarray(succ))


def test_truncation_and_rewards_params():
    env = Taxi()
    params = TaxiParams(max_steps=5, step_reward=-0.5, illegal_reward=-2.0, deliver_reward=3.0)
    st = env.state_from_index(((2 * 5 + 2) * 5 + 0) * 4 + 1)  # taxi (2,2), passenger at R
    step = jax.jit(env.step_env)
    for t in range(5):
        _, st, r, d, info = step(None, st, jnp.int32(4 if t == 0 else 1), params)
        assert float(r) == (-2.0 if t == 0 else -0.5)
        assert bool(d) == (t == 4) and bool(info.truncated) == (t == 4)
    assert int(st.step_count) == 5
    # default: Gymnasium's 200-step limit
    assert env.default_params.max_steps == 200


def test_rendering_layout_and_injective():
    env = Taxi()
    assert all(len(g) == 1 and g.isprintable() and not g.isspace() for g in env.glyphs)
    assert len(set(env.glyphs)) == len(env.glyphs) == len(env.glyph_meanings)
    grids = np.asarray(jax.jit(jax.vmap(lambda i: env.render_glyphs(env.state_from_index(i))))(
        jnp.arange(500, dtype=jnp.int32)))
    assert grids.shape == (500, 7, 11)
    assert len({g.tobytes() for g in grids}) == 500  # every state has its own picture
    # The frame and walls are Gymnasium's ANSI map (cells aside).
    text = env.glyphs_to_text(grids[0]).splitlines()
    for line, ref in zip(text, maps.TAXI_V3_MAP):
        assert [line[j] for j in range(0, 11, 2)] == [ref[j] for j in range(0, 11, 2)]
    assert text[0] == text[-1] == "+---------+"
    # A known state: taxi (2,2) empty, passenger at R, destination B.
    st = env.state_from_index(((2 * 5 + 2) * 5 + 0) * 4 + 3)
    assert env.render_text(st) == "\n".join([
        "+---------+",
        "|P:_|_:_:G|",
        "|_:_|_:_:_|",
        "|_:_:T:_:_|",
        "|_|_:_|_:_|",
        "|Y|_:_|D:_|",
        "+---------+"])


def test_generated_maps():
    for name in ("7x7", "10x10"):
        desc = maps.named_map(name)
        assert desc == maps.generate_map(*maps.GENERATED[name])  # deterministic by seed
        assert maps.is_connected(desc)
        env = Taxi(name)
        rows, cols = env.rows, env.cols
        assert env.grid_shape == (rows + 2, 2 * cols + 1)
        k = env.num_sites
        assert env.num_states == rows * cols * (k + 1) * k
        assert len(env.initial_states) == rows * cols * k * (k - 1)
        # generalised encoding round trip
        idx = jnp.arange(env.num_states, dtype=jnp.int32)
        st = jax.vmap(env.state_from_index)(idx)
        np.testing.assert_array_equal(np.asarray(jax.vmap(env.state_index)(st)), np.arange(env.num_states))
        # every state can finish (the oracle's distances are finite)
        assert (np.asarray(_host_bfs_lengths(env)) > 0).all()
    big = Taxi("10x10")
    obs, st = jax.jit(big.reset)(jax.random.key(0))
    assert obs.shape == (12, 21)


def test_step_matches_table_on_larger_map():
    env = Taxi("7x7")
    ns, r, d, info = _step_all(env, env.default_params)
    np.testing.assert_array_equal(np.asarray(ns).reshape(-1, 6), env.next_state_table)
    np.testing.assert_array_equal(np.asarray(info.success).reshape(-1, 6), env.terminal_table)
    kinds = np.array([-1.0, -10.0, 20.0])[env.reward_kind_table]
    np.testing.assert_array_equal(np.asarray(r).reshape(-1, 6), kinds)


def test_vmap_equals_loop_determinism_and_no_retrace():
    env = Taxi()
    params = env.default_params
    keys = jax.random.split(jax.random.key(3), 6)
    reset = jax.jit(env.reset_env)
    ob, sb = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None)))(keys, params)
    actions = jnp.arange(6, dtype=jnp.int32)
    out_b = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, None)))(None, sb, actions, params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, state, action, params):
        return env.step(key, state, action, params)

    for i in range(6):
        o, s = reset(keys[i], params)
        chex.assert_trees_all_equal(s, reset(keys[i], params)[1])
        chex.assert_trees_all_equal(s, jax.tree.map(lambda x: x[i], sb))
        out = step(keys[i], s, actions[i], params)
        ref = jax.tree.map(lambda x: x[i], out_b)
        chex.assert_trees_all_equal(out[2:], ref[2:])  # reward, done, info
    step(keys[0], s, jnp.int32(0), params.replace(max_steps=3))  # no retrace on new values


def test_bad_maps_raise():
    with pytest.raises(EnvError):
        Taxi("3x3")
    with pytest.raises(EnvError):
        Taxi(["+---+", "|R|G|", "+---+"])  # disconnected
    with pytest.raises(EnvError):
        Taxi(["+---+", "|R:T|", "+---+"])  # site letter clashes with the taxi glyph
    with pytest.raises(EnvError):
        maps.generate_map(1, 5, 2)
