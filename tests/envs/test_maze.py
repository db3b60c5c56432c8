"""Maze: generated mazes are perfect, the oracle is optimal, the dynamics keep their invariants."""

from collections import deque

from functools import lru_cache

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.core import EnvError
from envs_jax.maze import Maze, MazeParams, solve
from envs_jax.maze.env import GOAL, OPEN, PLAYER, WALL

SIZES = (5, 7, 9, 11, 21)


@lru_cache(maxsize=None)
def _env(size, placement="random"):
    """One env and its jitted batch functions per configuration, shared by the tests (compile once)."""
    env = Maze(size, placement)
    reset = jax.jit(jax.vmap(lambda k: env.reset_env(k, env.default_params)))
    solver = jax.jit(jax.vmap(lambda s: solve(env, s)))
    return env, reset, solver


def _batch_reset(env, n, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return _env(env.size, env.goal_placement)[1](keys)


def _unbatch(tree, i):
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def _host_bfs(walls, src):
    walls = np.asarray(walls)
    dist = np.full(walls.shape, -1, int)
    dist[tuple(src)] = 0
    q = deque([tuple(src)])
    while q:
        r, c = q.popleft()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nr, nc = r + dr, c + dc
            if not walls[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                q.append((nr, nc))
    return dist


@pytest.mark.parametrize("size", SIZES)
def test_generated_mazes_are_perfect(size):
    env = _env(size)[0]
    n = 32
    obs, states = _batch_reset(env, n, seed=size)
    m = (size - 1) // 2
    for i in range(n):
        st = _unbatch(states, i)
        walls = st.walls
        assert walls.shape == (size, size)
        assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
        assert walls[::2, ::2].all()  # lattice corners are always walls
        assert not walls[1::2, 1::2].any()  # every cell is open
        passages = int((~walls).sum()) - m * m
        assert passages == m * m - 1  # a tree: edges = cells - 1
        dist = _host_bfs(walls, st.pos)
        assert (dist[~walls] >= 0).all()  # connected
        # start and goal: distinct open cell squares
        assert tuple(st.pos) != tuple(st.goal)
        for p in (st.pos, st.goal):
            assert p[0] % 2 == 1 and p[1] % 2 == 1
        assert int(st.step_count) == 0
        np.testing.assert_array_equal(np.asarray(obs[i]), np.asarray(env.render_glyphs(st)))


def test_rendering_symbols():
    env = Maze(7)
    obs, st = jax.jit(env.reset)(jax.random.key(3))
    obs = np.asarray(obs)
    assert env.glyphs == ("#", "_", "P", "G") and len(env.glyph_meanings) == 4
    assert (obs == PLAYER).sum() == 1 and (obs == GOAL).sum() == 1
    np.testing.assert_array_equal(obs == WALL, np.asarray(st.walls))
    text = env.render_text(st)
    assert len(text.splitlines()) == 7 and set(text) <= set("#_PG\n")


def _play_plans(env, states, plans, params):
    """Replay each plan (padding -1 = no-op) in one jitted scan; per-step (done, success, effective)."""

    def one(state, plan):
        def body(st, a):
            _, nst, r, d, info = env.step_env(None, st, jnp.maximum(a, 0), params)
            live = a >= 0
            nst = jax.tree.map(lambda x, y: jnp.where(live, x, y), nst, st)
            return nst, (d & live, info.success & live, info.effective | ~live, r)

        return jax.lax.scan(body, state, plan)

    return jax.jit(jax.vmap(one))(states, plans)


@pytest.mark.parametrize("size", (5, 9, 21))
def test_oracle_matches_host_bfs_and_reaches_goal(size):
    env = _env(size)[0]
    params = env.default_params
    n = 32
    _, states = _batch_reset(env, n, seed=100 + size)
    lengths, plans = _env(env.size)[2](states)
    assert plans.shape == (n, env.max_solution_length)
    final, (done, success, effective, reward) = _play_plans(env, states, plans, params)
    lengths, plans = np.asarray(lengths), np.asarray(plans)
    for i in range(n):
        st = _unbatch(states, i)
        L = int(lengths[i])
        assert L == _host_bfs(st.walls, st.pos)[tuple(st.goal)]
        assert (plans[i, L:] == -1).all() and (plans[i, :L] >= 0).all()
        expect = np.arange(env.max_solution_length) == L - 1
        np.testing.assert_array_equal(np.asarray(done[i]), expect)  # done exactly at step L
        np.testing.assert_array_equal(np.asarray(success[i]), expect)
        assert np.asarray(effective[i]).all()
        assert float(reward[i, L - 1]) == params.goal_reward + params.step_reward
    np.testing.assert_array_equal(np.asarray(final.pos), np.asarray(states.goal))


def test_oracle_from_passage_square():
    """Mid-episode the player may stand between two cells; the oracle still plans optimally."""
    env = _env(9)[0]
    _, st = jax.jit(env.reset)(jax.random.key(5))
    walls = np.asarray(st.walls)
    free = np.argwhere(~walls)
    passages = np.asarray([p for p in free if (p[0] + p[1]) % 2 == 1][:8], np.int32)
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(passages),) + x.shape), st)
    batch = batch.replace(pos=jnp.asarray(passages))
    lengths, plans = _env(env.size)[2](batch)
    _, (done, _, _, _) = _play_plans(env, batch, plans, env.default_params)
    for i, p in enumerate(passages):
        L = int(lengths[i])
        assert L == _host_bfs(walls, p)[tuple(np.asarray(st.goal))]
        assert bool(done[i, L - 1]) and int(np.asarray(done[i]).sum()) == 1


@pytest.mark.parametrize("placement", ("farthest", "diameter"))
def test_far_goal_placements(placement):
    env = _env(11, placement)[0]
    _, states = _batch_reset(env, 32, seed=7)
    m = 5
    for i in range(32):
        st = _unbatch(states, i)
        d = _host_bfs(st.walls, st.pos)
        cells = d[1::2, 1::2]
        assert d[tuple(st.goal)] == cells.max()
        if placement == "diameter":  # start is also an end of a longest path
            d2 = _host_bfs(st.walls, st.goal)
            assert d2[tuple(st.pos)] == d2[1::2, 1::2].max()


def test_random_rollouts_invariants():
    env = _env(9)[0]
    params = MazeParams(max_steps=40, step_reward=-0.1, goal_reward=10.0)
    n, T = 64, 60
    keys = jax.random.split(jax.random.key(11), n)
    actions = jax.random.randint(jax.random.key(12), (T, n), 0, 4)

    @jax.jit
    def rollout(keys, actions):
        _, states = jax.vmap(env.reset_env, in_axes=(0, None))(keys, params)

        def body(st, a):
            obs, nst, r, d, info = jax.vmap(env.step_env, in_axes=(None, 0, 0, None))(None, st, a, params)
            return nst, (st.pos, nst.pos, nst.step_count, obs, jax.vmap(env.render_glyphs)(nst),
                         r, d, info)

        return jax.lax.scan(body, states, actions)

    final, (prev_pos, pos, count, obs, rendered, reward, done, info) = rollout(keys, actions)
    walls = np.asarray(final.walls)  # walls never change; same for every step
    goal = np.asarray(final.goal)
    for t in range(T):
        p, q = np.asarray(prev_pos[t]), np.asarray(pos[t])
        assert not walls[np.arange(n), q[:, 0], q[:, 1]].any()  # never inside a wall
        moved = (p != q).any(axis=1)
        np.testing.assert_array_equal(np.asarray(info.effective[t]), moved)
        assert (np.abs(p - q).sum(axis=1) <= 1).all()
        at_goal = (q == goal).all(axis=1)
        np.testing.assert_array_equal(np.asarray(info.success[t]), at_goal)
        np.testing.assert_allclose(np.asarray(reward[t]), -0.1 + 10.0 * at_goal, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(count[t]), t + 1)
        np.testing.assert_array_equal(np.asarray(info.truncated[t]), (t + 1 >= 40) & ~at_goal)
        np.testing.assert_array_equal(np.asarray(done[t]), at_goal | (t + 1 >= 40))
        np.testing.assert_array_equal(np.asarray(obs[t]), np.asarray(rendered[t]))
    assert np.asarray(done).any(axis=0).all()
    assert np.asarray(info.success).any()  # some random walks do reach the goal


def test_determinism_and_vmap_equals_loop():
    env = Maze(7)
    params = env.default_params
    reset = jax.jit(env.reset_env)
    step = jax.jit(env.step_env)
    k = jax.random.key(42)
    o1, s1 = reset(k, params)
    o2, s2 = reset(k, params)
    chex.assert_trees_all_equal(s1, s2)
    keys = jax.random.split(jax.random.key(1), 8)
    ob, sb = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None)))(keys, params)
    actions = jnp.arange(8) % 4
    out_b = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, None)))(None, sb, actions, params)
    for i in range(8):
        o, s = reset(keys[i], params)
        chex.assert_trees_all_equal(s, jax.tree.map(lambda x: x[i], sb))
        out = step(None, s, actions[i], params)
        chex.assert_trees_all_equal(out, jax.tree.map(lambda x: x[i], out_b))
    # different keys give different mazes (overwhelmingly likely)
    assert len({np.asarray(sb.walls[i]).tobytes() for i in range(8)}) > 1


def test_no_recompilation_across_steps():
    env = Maze(7)
    params = env.default_params

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, state, action, params):
        return env.step(key, state, action, params)

    _, state = jax.jit(env.reset)(jax.random.key(0))
    key = jax.random.key(1)
    for t in range(10):
        key, sub = jax.random.split(key)
        _, state, _, _, _ = step(sub, state, jnp.int32(t % 4), params)
    # new param values (same structure) must not retrace either
    step(key, state, jnp.int32(0), params.replace(max_steps=5, goal_reward=3.0))


@pytest.mark.parametrize("bad", (4, 6, 3, 1, 0, -7, 8, 7.0, "7", True))
def test_bad_sizes_raise(bad):
    with pytest.raises(EnvError):
        Maze(bad)


def test_bad_goal_placement_raises():
    with pytest.raises(EnvError):
        Maze(7, goal_placement="nowhere")
