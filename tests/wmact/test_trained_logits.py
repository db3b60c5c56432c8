"""model.trained_logits_only: the training losses apply the LM head only at the positions they read (PPO's
model tokens, the warm start's answers). The same log-probs, entropies, losses and gradients as at every
position; what it saves is measured in benchmarks/trained_logits.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wmact_jax import ppo
from wmact_jax.models import ForwardOptions, ModelConfig, Transformer, apply
from wmact_jax.models.llama import LogitsHead
from wmact_jax.warmstart import ANSWER, FEEDBACK, demo_loss_fn, read_counts


def _model(tied=True):
    config = ModelConfig.tiny(64, num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64,
                              value_head=True, tie_word_embeddings=tied)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(3)))
    state = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), state)
    return graphdef, state


def _batch(rows=3, width=45, shared=23):
    """Rows sharing their first `shared` tokens, and a mask of model tokens after them: a different count per
    row (turns of model tokens between feedback), never position 0."""
    tokens = jax.random.randint(jax.random.PRNGKey(2), (rows, width), 0, 64)
    tokens = tokens.at[:, :shared].set(tokens[0, :shared])
    t = np.arange(width)
    mask = np.stack([((t >= shared + r) & ((t // (3 + r)) % 2 == 0)) for r in range(rows)])
    mask[0, 1:3] = True  # early positions too
    return tokens, jnp.asarray(mask)


def _assert_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=10 * tol, atol=tol)


@pytest.mark.parametrize("tied,shared,chunk,temperature", [
    (True, 0, 0, 1.0),
    (False, 0, 0, 0.7),  # an untied head, a tempered policy
    (True, 23, 0, 1.0),  # the shared-head forward
    (True, 0, 5, 1.0),  # with logits_chunk: the selected positions chunk by chunk
])
def test_the_lm_head_at_the_masked_positions_gives_their_logprobs_entropies_and_gradients(tied, shared, chunk,
                                                                                          temperature):
    graphdef, state = _model(tied)
    tokens, mask = _batch()
    k = int(mask.sum(axis=1).max())
    assert k < tokens.shape[1] // 2
    w = jax.random.normal(jax.random.PRNGKey(4), tokens.shape)

    def loss(st, selected):
        opts = ForwardOptions(logits_head=selected, logits_chunk=chunk if selected else 0)
        out = apply(graphdef, st, tokens, shared_head=shared, options=opts)
        assert isinstance(out.logits, LogitsHead) == selected
        lp, v, ent = ppo.token_logprobs_and_values(out.logits, out.values, tokens, temperature, mask,
                                                   k if selected else 0)
        m = mask.astype(jnp.float32)
        return jnp.sum(lp * w * m) + jnp.sum(ent * w * m) + jnp.sum(jnp.sin(v)), (lp, v, ent)

    (l0, out0), g0 = jax.jit(jax.value_and_grad(lambda st: loss(st, False), has_aux=True))(state)
    (l1, out1), g1 = jax.jit(jax.value_and_grad(lambda st: loss(st, True), has_aux=True))(state)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(out1[::2], out0[::2]):  # log-probs, entropies: equal at the mask, 0 elsewhere
        np.testing.assert_allclose(np.asarray(a), np.asarray(jnp.where(mask, b, 0.0)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out1[1]), np.asarray(out0[1]), rtol=1e-5, atol=1e-6)  # values: all
    assert float(jnp.max(jnp.abs(out1[0]))) > 1.0
    _assert_close(g1, g0, 1e-4)


def test_trained_positions_and_hits():
    graphdef, state = _model()
    tokens, mask = _batch()
    mask = mask.at[1, 0].set(True)  # position 0 has no prediction: never selected
    k = int(mask[:, 1:].sum(axis=1).max())
    idx = ppo.trained_positions(mask, k)
    for r in range(3):
        want = np.flatnonzero(np.asarray(mask[r, 1:])) + 1
        np.testing.assert_array_equal(np.asarray(idx[r, :len(want)]), want)
        assert not np.any(np.asarray(idx[r, len(want):]))
    head = apply(graphdef, state, tokens, options=ForwardOptions(logits_head=True)).logits
    assert head.chunk == 0
    _, _, hits = ppo.trained_token_stats(head, tokens, mask, k)
    logits = apply(graphdef, state, tokens).logits
    want = jnp.pad(jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:], ((0, 0), (1, 0)))
    np.testing.assert_array_equal(np.asarray(hits), np.asarray(want & mask.at[:, 0].set(False)))
    # next_token_stats, the one dispatch both losses read: the plain logits, the head at every position (all at
    # once, chunk by chunk) and at the mask's positions give the same three outputs where they are defined.
    plain = ppo.next_token_stats(logits, tokens, 0.7)
    np.testing.assert_array_equal(np.asarray(plain[2]), np.asarray(want))
    chunked = apply(graphdef, state, tokens, options=ForwardOptions(logits_chunk=7)).logits
    for other, where in ((ppo.next_token_stats(head, tokens, 0.7), True),
                         (ppo.next_token_stats(chunked, tokens, 0.7), True),
                         (ppo.next_token_stats(head, tokens, 0.7, mask, k), mask)):
        for a, b in zip(other, plain):
            np.testing.assert_allclose(np.asarray(a), np.asarray(jnp.where(where, b, jnp.zeros_like(b))),
                                       rtol=1e-5, atol=1e-5)


def _ppo_batch(tokens, mask, seed=0):
    E, S = tokens.shape
    r = np.random.default_rng(seed)
    return dict(tokens=tokens, mask=mask, logprobs=jnp.asarray(-r.random((E, S)) * 3, jnp.float32) * mask,
                values=jnp.asarray(r.normal(size=(E, S)), jnp.float32) * mask,
                advantages=jnp.asarray(r.normal(size=(E, S)), jnp.float32),
                returns=jnp.asarray(r.normal(size=(E, S)), jnp.float32))


def test_the_ppo_update_is_the_same_and_flags_an_episode_over_its_bound():
    graphdef, state = _model()
    tokens, mask = _batch(rows=4)
    k = int(mask.sum(axis=1).max())
    batch = _ppo_batch(tokens, mask)
    opt = optax.adam(1e-3)

    def run(max_trained, selected, b=batch):  # width buckets 16 (the head at every position) and 45
        cfg = ppo.PPOConfig(epochs=1, minibatches=2, max_trained=max_trained, width_buckets=(16, 45))
        opts = ForwardOptions(logits_head=selected)
        fn = lambda p, tk: (lambda o: (o.logits, o.values))(apply(graphdef, p, tk, options=opts))  # noqa: E731
        upd = jax.jit(ppo.make_update(cfg, fn, opt))
        return upd(ppo.TrainState.create(state, opt), b, jax.random.PRNGKey(0))

    s0, m0 = run(0, False)
    s1, m1 = run(k, True)
    _assert_close(s1.params, s0.params, 1e-5)
    for name in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac"):
        np.testing.assert_allclose(float(m1[name]), float(m0[name]), rtol=1e-4, atol=1e-6)
    assert float(m1["max_trained_exceeded"]) == 0.0 and "max_trained_exceeded" not in m0
    # A bound below an episode's count: its later tokens would read 0, and the metric says so.
    _, m2 = run(k - 1, True)
    assert float(m2["max_trained_exceeded"]) > 0.0
    with pytest.raises(ValueError, match="max_trained must be >= 0"):
        ppo.PPOConfig(max_trained=-1)


@pytest.mark.parametrize("state_loss", [0.0, 0.5])
def test_the_warm_start_loss_reads_the_answers_alone_the_same(state_loss):
    graphdef, state = _model()
    tokens, mask = _batch()
    marks = np.zeros(tokens.shape, np.int8)
    marks[np.asarray(mask)] = ANSWER
    marks[:, 30:33] = np.where(marks[:, 30:33] == 0, FEEDBACK, marks[:, 30:33])
    marks = jnp.asarray(marks)
    k = read_counts(np.asarray(marks), state_loss)
    assert k == int(((marks[:, 1:] == ANSWER) | ((marks[:, 1:] == FEEDBACK) & bool(state_loss))).sum(1).max())
    full = demo_loss_fn(graphdef, state_loss, ForwardOptions())
    sel = demo_loss_fn(graphdef, state_loss, ForwardOptions(logits_head=True))
    (l0, aux0), g0 = jax.value_and_grad(full, has_aux=True)(state, tokens, marks)
    (l1, aux1), g1 = jax.jit(jax.value_and_grad(sel, has_aux=True), static_argnums=3)(state, tokens, marks, k)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux1), np.asarray(aux0), rtol=1e-5)
    _assert_close(g1, g0, 1e-4)


def test_the_trainer_bounds_the_update_by_its_rollout():
    from configs import default
    from wmact_jax import config_check
    from wmact_jax.train import Trainer

    c = default.get_config()
    c.warmstart.enabled = False
    c = config_check.prepare_config(c, ())
    t = Trainer(c, "")
    assert t.forward_options(grad=True).logits_head and not t.forward_options(grad=False).logits_head
    assert t.ppo_cfg.max_trained == min(c.rollout.context_len, t.max_turns * c.rollout.max_turn_tokens) == 160
    c.model.trained_logits_only = False
    t = Trainer(c, "")
    assert not t.forward_options(grad=True).lazy_logits and t.ppo_cfg.max_trained == 0
