"""LevelQueueAutoReset: finished episodes take the queued levels in order, the ring's bookkeeping
(head / tail / served / reused) is exact, unread levels survive, reward/done/info describe the step
taken, and the whole thing runs under jit + lax.scan with a single trace.

The bookkeeping tests wrap Maze-5x5 / Taxi-v3 in `Tagged`, which adds a random 32-bit tag to every
generated level so each level has an identity (Maze-5x5 and Taxi-v3 have few distinct levels, so
equal contents would not prove the same level was served).
"""

from functools import lru_cache

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.core import Environment, EnvError
from envs_jax.oracles import optimal_actions
from envs_jax.wrappers import LevelQueueAutoReset

B, Q, REFILL = 4, 8, 2  # one static configuration per env: compiled once, reused by every test


class Tagged(Environment):
    """`inner` with a random uint32 tag on each generated level: state = (inner_state, tag)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = "Tagged-" + inner.name
        self.action_names = inner.action_names
        self.glyphs = inner.glyphs
        self.glyph_meanings = inner.glyph_meanings
        self.grid_shape = inner.grid_shape

    @property
    def default_params(self):
        return self.inner.default_params

    def reset_env(self, key, params):
        k_env, k_tag = jax.random.split(key)
        obs, st = self.inner.reset_env(k_env, params)
        return obs, (st, jax.random.bits(k_tag, (), jnp.uint32))

    def step_env(self, key, state, action, params):
        obs, st, r, d, info = self.inner.step_env(key, state[0], action, params)
        return obs, (st, state[1]), r, d, info

    def render_glyphs(self, state):
        return self.inner.render_glyphs(state[0])


@lru_cache(maxsize=None)
def _setup(name):
    inner, params = envs_jax.make(name)
    env = Tagged(inner)
    w = LevelQueueAutoReset(env, B, queue_size=Q, refill=REFILL)
    inner_step = jax.jit(jax.vmap(inner.step_env, in_axes=(0, 0, 0, None)))
    return inner, env, params, w, jax.jit(w.reset), jax.jit(w.step), inner_step


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _row(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb))


class Tracker:
    """Independent host check of one wrapper step, identifying levels by their tags."""

    def __init__(self, qs):
        qs = _host(qs)
        self.seen = set(int(t) for t in qs.queue[1]) | set(int(t) for t in qs.env_state[1])
        assert len(self.seen) == Q + B  # fresh, distinct levels at reset
        self.served = set()
        self.steps_with_mixed_done = 0

    def check(self, inner, inner_step, params, pre, actions, out):
        obs, post, reward, done, info = _host(out)
        pre = _host(pre)
        head, tail = int(pre.head), int(pre.tail)
        assert 0 <= tail - head <= Q
        unread = [(head + j) % Q for j in range(tail - head)]

        # reward / done / info describe the step taken (the envs are deterministic: any keys do).
        keys = jax.random.split(jax.random.key(0), B)
        _, stepped, r_ref, d_ref, info_ref = _host(inner_step(keys, pre.env_state[0], actions, params))
        np.testing.assert_array_equal(reward, r_ref)
        np.testing.assert_array_equal(done, d_ref)
        assert _tree_equal(info, info_ref)
        n_done = int(done.sum())
        if 0 < n_done < B:
            self.steps_with_mixed_done += 1

        # Continuing episodes keep their stepped state; finished ones take the queue in order.
        reused = 0
        k = 0
        for i in range(B):
            new = _row(post.env_state, i)
            if not done[i]:
                assert _tree_equal(new, (_row(stepped, i), pre.env_state[1][i]))
                continue
            tag = int(new[1])
            assert int(new[0].step_count) == 0
            if k < len(unread):  # an unread level is available: the next one in FIFO order
                assert _tree_equal(new, _row(pre.queue, unread[k])), (i, k)
                assert tag not in self.served
            else:  # ring ran dry: an already-served level comes back
                assert tag in self.served
            if tag in self.served:
                reused += 1
            self.served.add(tag)
            k += 1
        assert int(post.served) - int(pre.served) == n_done
        assert int(post.reused) - int(pre.reused) == reused
        assert reused == max(n_done - len(unread), 0)

        # Unread levels are never overwritten: the new unread list is the old one minus what was
        # served, in the same slots and order, followed by freshly generated (never seen) levels.
        new_head, new_tail = int(post.head), int(post.tail)
        assert 0 <= new_tail - new_head <= Q
        new_unread = [(new_head + j) % Q for j in range(new_tail - new_head)]
        left = unread[n_done:]
        assert new_unread[: len(left)] == left
        for s in left:
            assert _tree_equal(_row(post.queue, s), _row(pre.queue, s))
        for s in new_unread[len(left):]:
            tag = int(post.queue[1][s])
            assert tag not in self.seen
            self.seen.add(tag)
        assert len(new_unread) - len(left) == min(REFILL, Q - len(left))

        # Observations are those of the returned states.
        np.testing.assert_array_equal(obs, np.stack([np.asarray(inner.render_glyphs(_row(post.env_state[0], i)))
                                                     for i in range(B)]))
        return out[1]


def _policy(inner, state, key, oracle_mask):
    """Oracle actions where oracle_mask, random elsewhere (oracle episodes end early: mixed dones)."""
    acts = np.array(jax.random.randint(key, (B,), 0, inner.num_actions), np.int32)
    host = _host(state[0])
    for i in np.flatnonzero(oracle_mask):
        plan = optimal_actions(inner, _row(host, i))
        if plan:
            acts[i] = plan[0]
    return jnp.asarray(acts)


@pytest.mark.parametrize("name", ["Maze-5x5", "Taxi-v3"])
def test_queue_order_fresh_levels_and_dry_ring(name):
    inner, env, params, w, reset, step, inner_step = _setup(name)
    _, qs = reset(jax.random.key(1), params)
    tr = Tracker(qs)
    key = jax.random.key(2)

    # 1) refill keeps up: max_steps=2 -> B episodes end every 2 steps = REFILL per step on average.
    p2 = params.replace(max_steps=2)
    for _ in range(8):
        key, k_a, k_s = jax.random.split(key, 3)
        acts = jax.random.randint(k_a, (B,), 0, inner.num_actions)
        qs = tr.check(inner, inner_step, p2, qs, acts, step(k_s, qs, acts, p2))
    h = _host(qs)
    assert int(h.reused) == 0 and int(h.served) == 4 * B
    assert len(tr.served) == 4 * B  # every served level was distinct

    # 2) the ring runs dry: max_steps=1 -> B = 2 * REFILL episodes end at every step.
    p1 = params.replace(max_steps=1)
    expected_reused = 0
    for t in range(6):
        pre = _host(qs)
        available = int(pre.tail) - int(pre.head)
        key, k_a, k_s = jax.random.split(key, 3)
        acts = jax.random.randint(k_a, (B,), 0, inner.num_actions)
        qs = tr.check(inner, inner_step, p1, qs, acts, step(k_s, qs, acts, p1))
        expected_reused += max(B - available, 0)
        assert int(_host(qs).reused) == expected_reused
    assert expected_reused > 0
    assert int(_host(qs).served) == 4 * B + 6 * B

    # 3) mixed dones (oracle episodes succeed early, random ones are truncated), ring recovering.
    p8 = params.replace(max_steps=8)
    oracle_mask = np.arange(B) % 2 == 0
    for _ in range(14):
        key, k_a, k_s = jax.random.split(key, 3)
        acts = _policy(inner, qs.env_state, k_a, oracle_mask)
        qs = tr.check(inner, inner_step, p8, qs, acts, step(k_s, qs, acts, p8))
    assert tr.steps_with_mixed_done > 0


def test_pointers_do_not_overflow():
    """A long run (2**31 levels) must not wrap the int32 ring pointers: start near the limit."""
    inner, env, params, w, reset, step, inner_step = _setup("Maze-5x5")
    _, qs = reset(jax.random.key(8), params)
    offset = ((2**31 - 1) // Q) * Q - 2 * Q
    qs = qs.replace(head=qs.head + offset, tail=qs.tail + offset)
    tr = Tracker(qs)
    p1 = params.replace(max_steps=1)
    key = jax.random.key(9)
    for _ in range(2 * Q):
        key, k_a, k_s = jax.random.split(key, 3)
        acts = jax.random.randint(k_a, (B,), 0, inner.num_actions)
        qs = tr.check(inner, inner_step, p1, qs, acts, step(k_s, qs, acts, p1))
        assert 0 <= int(qs.head) < Q


def test_scan_compiles_once_and_matches_step_loop():
    inner, env, params, w, reset, step, _ = _setup("Maze-5x5")
    T = 6

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key, qs, params):
        def body(qs, k):
            k_a, k_s = jax.random.split(k)
            acts = jax.random.randint(k_a, (B,), 0, inner.num_actions)
            _, qs, r, d, info = w.step(k_s, qs, acts, params)
            return qs, (acts, r, d)

        return jax.lax.scan(body, qs, jax.random.split(key, T))

    p = params.replace(max_steps=2)
    _, qs0 = reset(jax.random.key(3), p)
    qs_scan, (acts, rs, ds) = run(jax.random.key(4), qs0, p)
    # Second call with new values (and other max_steps: a traced param) reuses the compilation.
    run(jax.random.key(5), qs_scan, params.replace(max_steps=3))

    qs = qs0
    for t, k in enumerate(jax.random.split(jax.random.key(4), T)):
        _, k_s = jax.random.split(k)
        _, qs, r, d, _ = step(k_s, qs, acts[t], p)
        np.testing.assert_array_equal(r, rs[t])
        np.testing.assert_array_equal(d, ds[t])
    assert _tree_equal(_host(qs), _host(qs_scan))
    assert int(qs_scan.served) == int(np.asarray(ds).sum()) > 0


def test_bad_arguments_raise_env_error():
    env, _ = envs_jax.make("Maze-5x5")
    with pytest.raises(EnvError):
        LevelQueueAutoReset(env, 0)
    with pytest.raises(EnvError):
        LevelQueueAutoReset(env, -3)
    with pytest.raises(EnvError, match="refill"):
        LevelQueueAutoReset(env, 4, queue_size=2, refill=3)
    with pytest.raises(EnvError):
        LevelQueueAutoReset(env, 4, queue_size=0)
    with pytest.raises(EnvError):
        LevelQueueAutoReset(env, 4, refill=0)
    w = LevelQueueAutoReset(env, 100)  # defaults: queue_size = num_envs, refill = ceil(B / 32)
    assert (w.queue_size, w.refill) == (100, 4)


@pytest.mark.parametrize("name", ["Maze-5x5", "Taxi-v3"])
def test_env_step_returns_fresh_level_after_done(name):
    env, params = envs_jax.make(name)
    step = jax.jit(env.step)
    _, s0 = env.reset(jax.random.key(0), params)
    key = jax.random.key(7)
    # Not done: the stepped state itself.
    _, s_ref, r_ref, d_ref, _ = env.step_env(jax.random.split(key)[0], s0, 0, params)
    _, s1, r1, d1, _ = step(key, s0, 0, params)
    assert not bool(d1) and _tree_equal(_host(s1), _host(s_ref))
    # Done (max_steps=1): reward/done/info of the step, state = the reset of the second key.
    p1 = params.replace(max_steps=1)
    obs, s2, r2, d2, info = step(key, s0, 0, p1)
    assert bool(d2) and bool(info.truncated) and not bool(info.success)
    np.testing.assert_array_equal(r2, r_ref)
    obs_re, s_re = env.reset_env(jax.random.split(key)[1], p1)
    assert int(s2.step_count) == 0
    assert _tree_equal(_host(s2), _host(s_re))
    np.testing.assert_array_equal(obs, obs_re)
