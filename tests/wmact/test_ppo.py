"""PPO pieces on hand-computed numbers, and the full update on a toy bandit."""
import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wmact_jax import ppo as P

# One episode: prompt, model, model, feedback, feedback, model, pad.
MASK = jnp.array([[0, 1, 1, 0, 0, 1, 0]], bool)
VALUES = jnp.array([[7.0, 0.5, 0.6, 9.0, 9.0, 0.4, 9.0]])  # non-model values must be ignored


def test_gae_skips_non_model_tokens_hand_computed():
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 0.0]])
    adv, ret = jax.jit(P.gae, static_argnums=(3, 4))(rewards, VALUES, MASK, 0.9, 0.8)
    # t=5: delta = 2 + 0.9*0 - 0.4 = 1.6;                 A5 = 1.6
    # t=2: delta = 1 + 0.9*0.4 - 0.6 = 0.76;              A2 = 0.76 + 0.72*1.6 = 1.912
    # t=1: delta = 0 + 0.9*0.6 - 0.5 = 0.04;              A1 = 0.04 + 0.72*1.912 = 1.41664
    np.testing.assert_allclose(adv, [[0, 1.41664, 1.912, 0, 0, 1.6, 0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, [[0, 1.91664, 2.512, 0, 0, 2.0, 0]], rtol=1e-5, atol=1e-6)


def test_gae_reward_on_feedback_token_credited_to_previous_model_token():
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.5, 0.0, 2.0, 0.0]])
    adv, _ = P.gae(rewards, VALUES, MASK, 0.9, 0.8)
    # t=2: delta = (1 + 0.5) + 0.36 - 0.6 = 1.26; A2 = 1.26 + 1.152 = 2.412; A1 = 0.04 + 0.72*2.412
    np.testing.assert_allclose(adv, [[0, 1.77664, 2.412, 0, 0, 1.6, 0]], rtol=1e-5, atol=1e-6)


def test_gae_gamma_lam_one_is_reward_to_go_minus_value_batched():
    r = jnp.array([[0, 1.0, 0, 2.0], [0, 0, 3.0, 0]])
    v = jnp.array([[0, 0.5, 0.5, 0.5], [0, 1.0, 1.0, 0]])
    m = jnp.array([[0, 1, 1, 1], [0, 1, 1, 0]], bool)
    adv, _ = P.gae(r, v, m, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[0, 2.5, 1.5, 1.5], [0, 2.0, 2.0, 0]], rtol=1e-6)


def _gae_reference(r, v, m, gamma, lam):
    """Plain GAE on each episode's model tokens only (non-model rewards folded into the previous model token)."""
    adv = np.zeros_like(r)
    for e in range(r.shape[0]):
        idx = np.flatnonzero(m[e])
        rr = np.array([r[e, i:(idx[j + 1] if j + 1 < len(idx) else r.shape[1])].sum() for j, i in enumerate(idx)])
        vv = v[e, idx]
        a, nv = 0.0, 0.0
        for j in reversed(range(len(idx))):
            a = rr[j] + gamma * nv - vv[j] + gamma * lam * a
            adv[e, idx[j]], nv = a, vv[j]
    return adv


def test_gae_matches_reference_on_random_batch():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(5, 12)).astype(np.float32), rng.normal(size=(5, 12)).astype(np.float32)
    m = rng.random((5, 12)) < 0.5
    m[:, 0] = True  # no reward before the first model token (those are dropped by design)
    m[4] = False  # an episode without model tokens gets nothing
    adv, ret = P.gae(r, v, m, 0.95, 0.9)
    want = _gae_reference(r, v, m, 0.95, 0.9)
    np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, np.where(m, want + v, 0.0), rtol=1e-4, atol=1e-5)


def test_grpo_advantages():
    r = jnp.array([1.0, 0.0, 1.0, 1.0])
    m = jnp.array([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 0, 1]], bool)
    a = P.grpo_advantages(r, m, group_size=2)
    # group 0: mean .5 std .5 -> +1, -1; group 1: all equal -> 0
    np.testing.assert_allclose(a, [[0, 1, 1], [0, -1, 0], [0, 0, 0], [0, 0, 0]], atol=1e-5)
    a2 = P.grpo_advantages(r, m, group_ids=jnp.array([0, 1, 0, 1]), scale_by_std=False)
    # group 0 = {1, 1} -> 0; group 1 = {0, 1}: mean .5
    np.testing.assert_allclose(a2, [[0, 0, 0], [0, -0.5, 0], [0, 0, 0], [0, 0, 0.5]], atol=1e-6)
    with pytest.raises(ValueError):
        P.grpo_advantages(r, m, group_size=3)


def test_clipped_policy_loss():
    ratio = jnp.array([1.1, 1.5, 1.5, 0.5, 0.5])
    adv = jnp.array([1.0, 1.0, -1.0, -1.0, 1.0])
    old = jnp.zeros(5)
    loss, clipped = P.policy_loss_per_token(jnp.log(ratio), old, adv, 0.2, 0.2)
    # inside; A>0 r>1+e clipped; A<0 r>1+e unclipped (pessimistic); A<0 r<1-e clipped; A>0 r<1-e unclipped
    np.testing.assert_allclose(loss, [-1.1, -1.2, 1.5, 0.8, -0.5], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [0, 1, 0, 1, 0])
    loss_hi, _ = P.policy_loss_per_token(jnp.log(ratio), old, adv, 0.2, 0.28)  # clip-higher
    np.testing.assert_allclose(loss_hi[1], -1.28, rtol=1e-6)


def test_value_clipping():
    v = jnp.array([1.5, 0.5, 1.1])
    old = jnp.array([1.0, 1.0, 1.0])
    ret = jnp.array([2.0, 0.0, 2.0])
    loss, clipped = P.value_loss_per_token(v, old, ret, 0.2)
    # (1.5-2)^2=.25 vs (1.2-2)^2=.64 -> .32; (.5-0)^2=.25 vs (.8-0)^2=.64 -> .32; inside: .5*.81
    np.testing.assert_allclose(loss, [0.32, 0.32, 0.405], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [1, 1, 0])
    plain, _ = P.value_loss_per_token(v, old, ret, None)
    np.testing.assert_allclose(plain, [0.125, 0.125, 0.405], rtol=1e-6)


def test_entropy_and_kl():
    np.testing.assert_allclose(P.entropy_from_logits(jnp.zeros(4)), math.log(4), rtol=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(P.entropy_from_logits(jnp.array([0.0, math.log(3.0)])), h, rtol=1e-6)
    lp = jnp.log(jnp.array([0.2, 0.5, 0.9]))
    np.testing.assert_allclose(P.kl_k3(lp, lp), 0.0, atol=1e-7)
    d = math.log(0.5) - math.log(0.2)
    np.testing.assert_allclose(P.kl_k3(lp[:1], jnp.log(jnp.array([0.5]))), [math.exp(d) - d - 1], rtol=1e-6)
    assert bool(jnp.all(P.kl_k3(lp, lp[::-1]) >= 0))


def test_aggregation_modes():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    m = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(P.aggregate(x, m, "token-mean"), 10.0 / 4)
    np.testing.assert_allclose(P.aggregate(x, m, "seq-mean-token-sum"), (6.0 + 4.0) / 2)


def test_token_alignment():
    # logits at t predict token t+1: make position 0 put all mass on token 2, position 1 on token 1.
    logits = jnp.array([[[0.0, 0.0, 50.0], [0.0, 50.0, 0.0], [0.0, 0.0, 0.0]]])
    values = jnp.array([[10.0, 20.0, 30.0]])
    tokens = jnp.array([[0, 2, 0]])
    lp, v, ent = P.token_logprobs_and_values(logits, values, tokens)
    np.testing.assert_allclose(lp[0, :2], [0.0, 0.0], atol=1e-6)  # position 0 has no prediction
    assert float(lp[0, 2]) < -40.0  # token 0 was nearly impossible after position 1
    np.testing.assert_allclose(v, [[0.0, 10.0, 20.0]])
    np.testing.assert_allclose(ent[0, 1:], [0.0, 0.0], atol=1e-6)


def test_token_logprobs_equal_a_gather_on_sliced_logits_with_gradients():
    # The function computes every position's distribution and drops the last after the reductions; the
    # textbook form slices the logits first and gathers the targets. Same values, same gradients.
    k1, k2 = jax.random.split(jax.random.key(0))
    logits = 3.0 * jax.random.normal(k1, (3, 7, 11))
    tokens = jax.random.randint(k2, (3, 7), 0, 11)

    def ours(lo):
        lp, _, ent = P.token_logprobs_and_values(lo, jnp.zeros(tokens.shape), tokens)
        return lp, ent

    def textbook(lo):
        logp = jax.nn.log_softmax(lo[:, :-1], axis=-1)
        lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        pad = jnp.zeros((3, 1))
        return jnp.concatenate([pad, lp], 1), jnp.concatenate([pad, ent], 1)

    w = jax.random.normal(jax.random.key(1), (2, 3, 7))  # an arbitrary scalar of both outputs
    scalar = lambda f: lambda lo: jnp.sum(w[0] * f(lo)[0] + w[1] * f(lo)[1])
    for a, b in zip(ours(logits), textbook(logits)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(scalar(ours))(logits), jax.grad(scalar(textbook))(logits), rtol=1e-5,
                               atol=1e-6)


def test_token_logprobs_of_the_tempered_policy():
    """temperature T: the log-probs and entropy of softmax(logits / T), the distribution a rollout at
    temperature T draws from."""
    k1, k2 = jax.random.split(jax.random.key(2))
    logits = 3.0 * jax.random.normal(k1, (2, 5, 9))
    tokens = jax.random.randint(k2, (2, 5), 0, 9)
    lp, _, ent = P.token_logprobs_and_values(logits, jnp.zeros(tokens.shape), tokens, 0.5)
    logp = jax.nn.log_softmax(logits[:, :-1] / 0.5, axis=-1)
    np.testing.assert_allclose(lp[:, 1:], jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0], rtol=1e-5)
    np.testing.assert_allclose(ent[:, 1:], -jnp.sum(jnp.exp(logp) * logp, axis=-1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(lp, P.token_logprobs_and_values(logits, jnp.zeros(tokens.shape), tokens)[0])


# ---------------------------------------------------------------------------------------------
# Toy bandit: prompt token 0, then one model token in {1, 2, 3}; token 2 earns reward 1.

V, D, E, S, GOOD = 4, 8, 32, 2, 2


def toy_apply(params, tokens):  # [M,S] -> ([M,S,V], [M,S])
    h = params["emb"][tokens]
    return h @ params["w"], h @ params["wv"]


def toy_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "emb": jax.random.normal(k1, (V, D)) * 0.1,
        "w": jax.random.normal(k2, (D, V)) * 0.1,
        "wv": jnp.zeros((D,)),
    }


@jax.jit
def _p_good(params):
    logits, _ = toy_apply(params, jnp.zeros((1, 1), jnp.int32))
    logits = logits[0, 0].at[0].set(-1e9)  # the prompt token is never a valid answer
    return jax.nn.softmax(logits)[GOOD]


def p_good(params):
    return float(_p_good(params))


@jax.jit
def rollout(params, key):
    logits, _ = toy_apply(params, jnp.zeros((E, 1), jnp.int32))
    a = jax.random.categorical(key, logits[:, 0].at[:, 0].set(-1e9))
    tokens = jnp.stack([jnp.zeros_like(a), a], axis=1)
    lo, va = toy_apply(params, tokens)
    lp, v, _ = P.token_logprobs_and_values(lo, va, tokens)
    mask = jnp.array([[False, True]]).repeat(E, 0)
    r = (a == GOOD).astype(jnp.float32)
    return {
        "tokens": tokens, "mask": mask, "logprobs": lp, "values": v,
        "rewards": jnp.stack([jnp.zeros_like(r), r], 1),
        "episode_rewards": r, "group_ids": jnp.arange(E) // 8,
        "ref_logprobs": lp,
    }


CONFIGS = {
    "gae": P.PPOConfig(epochs=2, minibatches=4, ent_coef=0.01, value_clip=None),
    "grpo": P.PPOConfig(epochs=2, minibatches=4, ent_coef=0.01, advantage="grpo", kl_coef=0.05, vf_coef=0.0),
}
_UPDATES = {}


def jitted_update(name):
    """One jitted update per config, shared by the tests (compiling is the slow part)."""
    if name not in _UPDATES:
        cfg = CONFIGS[name]
        opt = P.make_optimizer(optax.linear_schedule(0.05, 0.02, 100), cfg.max_grad_norm)
        chex.clear_trace_counter()
        _UPDATES[name] = (jax.jit(chex.assert_max_traces(P.make_update(cfg, toy_apply, opt), n=1)), opt)
    return _UPDATES[name]


def test_critic_learning_rate_applies_to_the_critic_only():
    """make_optimizer(critic_learning_rate=): value head and critic model take their own Adam rate."""
    params = {"policy": {"embed": jnp.zeros((3,)), "value_head": {"kernel": jnp.zeros((2, 1))}},
              "critic": {"embed": jnp.zeros((3,))}}
    assert [P.is_critic_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)] == [True, False, True]
    opt = P.make_optimizer(1e-3, max_grad_norm=None, critic_learning_rate=1e-1)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    step = {jax.tree_util.keystr(p): float(jnp.abs(u).max()) for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    np.testing.assert_allclose(step["['policy']['embed']"], 1e-3, rtol=1e-3)
    np.testing.assert_allclose(step["['policy']['value_head']['kernel']"], 1e-1, rtol=1e-3)
    np.testing.assert_allclose(step["['critic']['embed']"], 1e-1, rtol=1e-3)


@pytest.mark.parametrize("name", ["gae", "grpo"])
def test_make_update_learns_rewarded_token_and_compiles_once(name):
    update, opt = jitted_update(name)  # assert_max_traces(n=1): a second trace would raise
    key = jax.random.PRNGKey(0)
    state = P.TrainState.create(toy_params(key), opt)
    p0 = p_good(state.params)
    for _ in range(15):
        key, k1, k2 = jax.random.split(key, 3)
        state, metrics = update(state, rollout(state.params, k1), k2)
    p1 = p_good(state.params)
    assert p0 < 0.4 and p1 > 0.8, (p0, p1)
    assert int(state.step) == 15 * 2 * 4
    for k in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac",
              "explained_variance", "grad_norm"):
        assert np.isfinite(float(metrics[k])), k
    assert ("kl_ref" in metrics) == (CONFIGS[name].kl_coef > 0)


def test_value_loss_decreases_on_fixed_batch():
    update, opt = jitted_update("gae")
    state = P.TrainState.create(toy_params(jax.random.PRNGKey(1)), opt)
    batch = rollout(state.params, jax.random.PRNGKey(2))
    losses = []
    for i in range(10):
        state, m = update(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["value_loss"]))
    # The critic sees one state (the prompt), so the best it can do is the mean reward:
    # the loss falls toward 0.5 * Var(r).
    floor = 0.5 * float(jnp.var(batch["episode_rewards"]))
    assert losses[-1] - floor < 0.25 * (losses[0] - floor), (losses, floor)


def test_kl_without_reference_raises():
    cfg = P.PPOConfig(kl_coef=0.1)
    opt = P.make_optimizer(0.01)
    update = P.make_update(cfg, toy_apply, opt)
    batch = dict(rollout(toy_params(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)))
    batch.pop("ref_logprobs")
    state = P.TrainState.create(toy_params(jax.random.PRNGKey(0)), opt)
    with pytest.raises(ValueError, match="ref_logprobs"):
        jax.eval_shape(update, state, batch, jax.random.PRNGKey(0))


@pytest.mark.parametrize("last", [1, 5])
def test_width_buckets_train_on_a_prefix_with_the_same_result(last):
    """Trailing padding is never trained on: the bucketed update equals the full-width one."""
    W = 8
    base = rollout(toy_params(jax.random.PRNGKey(3)), jax.random.PRNGKey(4))
    pad = lambda x: jnp.pad(x, ((0, 0), (0, W - x.shape[1]))) if x.ndim == 2 else x
    batch = {k: pad(v) for k, v in base.items()}
    if last > 1:  # move the model token to position `last` (toy_apply is position-independent)
        for k in ("tokens", "mask", "logprobs", "values", "rewards", "ref_logprobs"):
            batch[k] = batch[k].at[:, last].set(batch[k][:, 1]).at[:, 1].set(jnp.zeros_like(batch[k][:, 1]))
    assert P.width_buckets(8, base=2) == (2, 4, 8)
    results = []
    for buckets in ((), P.width_buckets(W, base=2)):
        cfg = dataclasses.replace(CONFIGS["gae"], width_buckets=buckets)
        opt = P.make_optimizer(0.05, cfg.max_grad_norm)
        state = P.TrainState.create(toy_params(jax.random.PRNGKey(5)), opt)
        state, m = jax.jit(P.make_update(cfg, toy_apply, opt))(state, batch, jax.random.PRNGKey(6))
        results.append((state.params, m))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
