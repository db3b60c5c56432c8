"""Turn-budget annealing: the paper's halving rule and the baselines, step by step."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmact_jax import annealing as A


def _run(cfg, usage_per_iter, n_iter, e=4):
    upd = jax.jit(functools.partial(A.anneal_update, cfg))
    st = A.anneal_init(cfg)
    l, caps = [float(st.l_max)], [int(A.current_cap(cfg, st))]
    for i in range(n_iter):
        st = upd(st, jnp.full((e,), usage_per_iter(i), jnp.int32))
        l.append(float(st.l_max))
        caps.append(int(A.current_cap(cfg, st)))
    return st, l, caps


def test_wmact_rule_constant_usage():
    cfg = A.AnnealConfig(kind="wmact", l0=30, tau=3)
    st, l, caps = _run(cfg, lambda i: 5, 9)
    # L_max changes only every tau=3 iterations: 30 -> 17.5 -> 11.25 -> 8.125
    np.testing.assert_allclose(l, [30, 30, 30, 17.5, 17.5, 17.5, 11.25, 11.25, 11.25, 8.125])
    assert caps == [30, 30, 30, 18, 18, 18, 12, 12, 12, 9]
    assert int(st.iteration) == 9 and int(st.iterations_since_update) == 0
    assert float(st.turn_sum) == 0.0 and float(st.episode_count) == 0.0


def test_wmact_rounding_and_floor():
    st, l, _ = _run(A.AnnealConfig(kind="wmact", l0=30, tau=1, floor=2.0), lambda i: 1, 12)
    assert min(l) >= 2.0 and l[-1] == pytest.approx(2.0)
    cfg_r = A.AnnealConfig(kind="wmact", l0=30, tau=1, rounding="round")
    cfg_f = A.AnnealConfig(kind="wmact", l0=30, tau=1, rounding="floor")
    s = A.anneal_update(cfg_r, A.anneal_init(cfg_r), jnp.array([6, 6]))  # 18.0
    s = A.anneal_update(cfg_r, s, jnp.array([3, 4]))  # (3.5 + 18) / 2 = 10.75
    assert float(s.l_max) == pytest.approx(10.75)
    assert int(A.current_cap(cfg_r, s)) == 11
    assert int(A.current_cap(cfg_f, s)) == 10
    assert int(A.current_cap(A.AnnealConfig(), s)) == 11


def test_wmact_mean_over_all_episodes_of_window_and_valid_mask():
    cfg = A.AnnealConfig(kind="wmact", l0=20, tau=2)
    st = A.anneal_init(cfg)
    st = A.anneal_update(cfg, st, jnp.array([2, 4]))  # window so far: 6 turns / 2 episodes
    st = A.anneal_update(cfg, st, jnp.array([10, 99]), valid=jnp.array([True, False]))  # +10 / 1
    # L_mean = 16 / 3, L_max = (16/3 + 20) / 2
    assert float(st.l_max) == pytest.approx((16 / 3 + 20) / 2, rel=1e-6)


def test_linear_and_fixed():
    _, l, caps = _run(A.AnnealConfig(kind="linear", l0=30, final=10, num_iterations=4), lambda i: 5, 6)
    np.testing.assert_allclose(l, [30, 25, 20, 15, 10, 10, 10])
    assert caps == [30, 25, 20, 15, 10, 10, 10]
    _, l, caps = _run(A.AnnealConfig(kind="fixed", l0=12), lambda i: 1, 5)
    assert l == [12.0] * 6 and caps == [12] * 6


def test_adaptive_switch_off_is_the_fixed_cap():
    """kind='wmact' with adaptive=False (traced, as the trainer passes it) keeps L_max at l0 like
    'fixed'; True anneals as the rule says; both from one compiled function."""
    cfg = A.AnnealConfig(kind="wmact", l0=12, tau=1)
    upd = jax.jit(functools.partial(A.anneal_update, cfg))
    fixed = A.AnnealConfig(kind="fixed", l0=12, tau=1)
    off, on, ref = A.anneal_init(cfg), A.anneal_init(cfg), A.anneal_init(fixed)
    for _ in range(3):
        off = upd(off, jnp.array([2, 4]), adaptive=jnp.bool_(False))
        on = upd(on, jnp.array([2, 4]), adaptive=jnp.bool_(True))
        ref = A.anneal_update(fixed, ref, jnp.array([2, 4]))
    chex.assert_trees_all_close(off, ref)
    np.testing.assert_allclose(float(on.l_max), 3 + (12 - 3) / 8)
    assert upd._cache_size() == 1


def test_jits_once_and_runs_in_scan():
    cfg = A.AnnealConfig(kind="wmact", l0=30, tau=2)
    chex.clear_trace_counter()

    def update(state, turns):
        return A.anneal_update(cfg, state, turns)

    upd = jax.jit(chex.assert_max_traces(update, n=1))
    st = A.anneal_init(cfg)
    for i in range(5):
        st = upd(st, jnp.full((8,), i, jnp.int32))

    def body(s, _):
        s = A.anneal_update(cfg, s, jnp.full((3,), 5.0))
        return s, A.current_cap(cfg, s)

    _, caps = jax.jit(lambda s: jax.lax.scan(body, s, None, length=4))(A.anneal_init(cfg))
    assert caps.dtype == jnp.int32
    assert caps.tolist() == [30, 18, 18, 12]


def test_bad_config():
    with pytest.raises(ValueError):
        A.AnnealConfig(kind="cosine")
    with pytest.raises(ValueError):
        A.AnnealConfig(tau=0)
