"""Hand-computed checks of WMAct's reward transforms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmact_jax import rewards as R


def test_rescale_by_efficacy_hand_values():
    r = jnp.array([1.0, 1.0, 1.0, 0.0, 2.0])
    n_eff = jnp.array([3, 4, 0, 2, 0])
    n = jnp.array([4, 4, 0, 2, 5])
    # 1*3/4, 1*4/4, N=0 -> factor 0, 0*1, 2*0/5
    np.testing.assert_allclose(R.rescale_by_efficacy(r, n_eff, n), [0.75, 1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(R.efficacy(n_eff, n), [0.75, 1.0, 0.0, 1.0, 0.0])


def _episodes():
    return dict(
        success=jnp.array([True, True, False]),
        env_return=jnp.array([9.5, 10.3, -2.0]),
        n_actions=jnp.array([4, 10, 0]),
        n_effective=jnp.array([2, 10, 0]),
        format_errors=jnp.array([0, 1, 3]),
        turns=jnp.array([2, 5, 3]),
    )


def test_episode_rewards_success_rescaled_with_penalties():
    cfg = R.RewardConfig(outcome="success", rescale=True, format_penalty=0.5, step_penalty=0.1, step_penalty_unit="action")
    out = jax.jit(lambda kw: R.episode_rewards(cfg, **kw))(_episodes())
    np.testing.assert_allclose(out["outcome"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(out["scaled"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(out["format"], [0.0, -0.5, -1.5])
    np.testing.assert_allclose(out["step"], [-0.4, -1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["total"], [0.1, -0.5, -1.5], rtol=1e-5, atol=1e-6)


def test_episode_rewards_env_return_per_turn_penalty_no_rescale():
    cfg = R.RewardConfig(outcome="env_return", rescale=False, step_penalty=0.1, step_penalty_unit="turn")
    out = R.episode_rewards(cfg, **_episodes())
    np.testing.assert_allclose(out["scaled"], [9.5, 10.3, -2.0], rtol=1e-6)
    np.testing.assert_allclose(out["total"], [9.3, 9.8, -2.3], rtol=1e-5)


def test_revisit_penalty_counts_revisiting_turns():
    cfg = R.RewardConfig(outcome="success", rescale=False, revisit_penalty=0.2)
    out = jax.jit(lambda kw: R.episode_rewards(cfg, revisits=jnp.array([0, 2, 1]), **kw))(_episodes())
    np.testing.assert_allclose(out["revisit"], [0.0, -0.4, -0.2], rtol=1e-6)
    np.testing.assert_allclose(out["total"], [1.0, 0.6, -0.2], rtol=1e-6)
    # Not counted (the default): no penalty, whatever its size.
    np.testing.assert_allclose(R.episode_rewards(cfg, **_episodes())["revisit"], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(R.revisit_penalty(0.2, jnp.array([[True, False]])), [[-0.2, 0.0]])


def test_traced_switches_match_static_config():
    """rescale and the penalties as traced arguments (what the trainer's jitted iteration receives)
    give the static configs' rewards; one compiled function serves both settings."""
    ep = _episodes()

    @jax.jit
    def f(rescale, fmt, step):
        cfg = R.RewardConfig(outcome="success", rescale=rescale, format_penalty=fmt, step_penalty=step,
                             step_penalty_unit="action")
        return R.episode_rewards(cfg, **ep)["total"]

    for rescale, fmt, step in ((True, 0.5, 0.1), (False, 0.0, 0.0), (False, 0.5, 0.0)):
        want = R.episode_rewards(R.RewardConfig(outcome="success", rescale=rescale, format_penalty=fmt,
                                                step_penalty=step, step_penalty_unit="action"), **ep)["total"]
        got = f(jnp.bool_(rescale), jnp.float32(fmt), jnp.float32(step))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert f._cache_size() == 1


def test_config_validation():
    with pytest.raises(ValueError):
        R.RewardConfig(outcome="nope")
    with pytest.raises(ValueError):
        R.RewardConfig(step_penalty_unit="token")


def test_rewards_to_tokens_turn_and_episode_placement():
    # Episode 0: prompt(-1) t0 t0 fb t1 t1 pad ; Episode 1: prompt t0 fb t1 fb t2(no model token: masked out) pad
    turn_id = jnp.array([[-1, 0, 0, -1, 1, 1, -1],
                         [-1, 0, -1, 1, -1, 2, -1]])
    mask = jnp.array([[0, 1, 1, 0, 1, 1, 0],
                      [0, 1, 0, 1, 0, 0, 0]], bool)
    turn_r = jnp.array([[0.1, 0.2, 9.0],
                        [0.3, 0.4, 0.5]])
    ep_r = jnp.array([1.0, 2.0])
    got = jax.jit(R.rewards_to_tokens, static_argnames="placement")(turn_id, mask, turn_r, ep_r)
    want = np.array([
        # turn 0 ends at 2; turn 1 (and the episode) ends at 5; turn 2 has no model token -> orphan at end
        [0, 0, 0.1, 0, 0, 0.2 + 1.0 + 9.0, 0],
        # turn 0 ends at 1; turn 1 at 3 (= episode end); turn 2 masked -> orphan at episode end
        [0, 0.3, 0, 0.4 + 2.0 + 0.5, 0, 0, 0],
    ])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got_ep = R.rewards_to_tokens(turn_id, mask, turn_r, ep_r, placement="episode")
    want_ep = np.zeros((2, 7))
    want_ep[0, 5] = 0.1 + 0.2 + 9.0 + 1.0
    want_ep[1, 3] = 0.3 + 0.4 + 0.5 + 2.0
    np.testing.assert_allclose(got_ep, want_ep, rtol=1e-6)
    # Total reward is conserved.
    np.testing.assert_allclose(got.sum(1), got_ep.sum(1), rtol=1e-6)


def test_rewards_to_tokens_no_turn_rewards_and_empty_episode():
    turn_id = jnp.array([[-1, 0, 0], [-1, -1, -1]])
    mask = jnp.array([[0, 1, 1], [0, 0, 0]], bool)
    got = R.rewards_to_tokens(turn_id, mask, None, jnp.array([3.0, 5.0]))
    np.testing.assert_allclose(got, [[0, 0, 3.0], [0, 0, 0]])
