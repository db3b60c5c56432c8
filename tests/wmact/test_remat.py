"""model.remat (rematerialised layers) and model.logits_chunk (the logits chunk by chunk): the same
log-probs, entropies and gradients as the plain forward. That the flags reach the two training paths is
tested beside them (test_warmstart_curriculum.py, test_train.py); what they save is measured, not
asserted: benchmarks/train_memory.py."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmact_jax import ppo
from wmact_jax.models import ForwardOptions, KVCache, ModelConfig, Transformer, apply
from wmact_jax.models.llama import LogitsHead


def _model(tied=True, intermediate_size=64):
    config = ModelConfig.tiny(64, num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                              intermediate_size=intermediate_size, value_head=True, tie_word_embeddings=tied)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(3)))
    state = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), state)
    return config, graphdef, state


def _equations(jaxpr):
    """Every equation of the program, its sub-programs' included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


def _tokens_and_weights():
    """3 rows of 45 tokens sharing their first 23 (a shared prompt head), and weights for a loss on their logits."""
    tokens = jax.random.randint(jax.random.PRNGKey(2), (3, 45), 0, 64)
    return tokens.at[:, :23].set(tokens[0, :23]), jax.random.normal(jax.random.PRNGKey(4), (3, 45, 64))


def _assert_same(l1, g1, l0, g0, atol=1e-5):
    """Loss l1 and gradients g1 equal to l0, g0 up to float round-off."""
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("T,offset", [(45, 0), (40, 23), (10, 5)])  # whole + padded blocks, a shared head's offset
def test_attention_by_rematerialised_query_blocks_equals_the_triangle(T, offset):
    from wmact_jax.models.llama import causal_attention_chunked, causal_attention_scanned

    q = jax.random.normal(jax.random.PRNGKey(0), (2, T, 4, 8))
    k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, offset + T, 2, 8)) for i in (1, 2))
    f = lambda fn: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(fn(*a, 16, offset))), argnums=(0, 1, 2)))
    (l0, g0), (l1, g1) = f(causal_attention_chunked)(q, k, v), f(causal_attention_scanned)(q, k, v)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("shared", [0, 23])  # the plain forward and the shared-head one (its own layer scan)
def test_remat_gives_the_same_logits_and_gradients(monkeypatch, shared):
    from wmact_jax.models import llama

    monkeypatch.setattr(llama, "ATTENTION_CHUNK", 16)  # 45 tokens: the block-causal attention, as in training
    _, graphdef, state = _model()
    tokens, w = _tokens_and_weights()

    def loss(st, remat, remat_attention=False):
        out = apply(graphdef, st, tokens, shared_head=shared,
                    options=ForwardOptions(remat=remat, remat_attention=remat_attention))
        return jnp.sum(out.logits * w) + jnp.sum(jnp.sin(out.values))

    grad = {r: jax.jit(jax.value_and_grad(lambda st, r=r: loss(st, r))) for r in (False, True)}
    (l0, g0), (l1, g1) = grad[False](state), grad[True](state)
    (l2, g2) = jax.jit(jax.value_and_grad(lambda st: loss(st, True, True)))(state)  # + the attention's blocks
    for l, g in ((l1, g1), (l2, g2)):
        _assert_same(l, g, l0, g0)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0)) > 1e-2  # not vacuous
    # The backward really recomputes: the differentiated program holds a remat region (jax.checkpoint).
    regions = lambda f: len(re.findall(r"\bremat\w*\[", str(jax.make_jaxpr(f)(state))))
    assert regions(grad[True]) >= 1 and regions(grad[False]) == 0


def test_remat_with_a_cache_is_an_error():
    config, graphdef, state = _model()
    cache = KVCache.init(config, 2, 16)
    for option in (dict(remat=True), dict(remat_attention=True), dict(mlp_chunk=8)):
        with pytest.raises(ValueError, match="remat / remat_attention / flash_attention / mlp_chunk are for cache-free"):
            apply(graphdef, state, jnp.zeros((2, 3), jnp.int32), cache, options=ForwardOptions(**option))
    with pytest.raises(ValueError, match="mlp_chunk must be >= 0"):
        ForwardOptions(mlp_chunk=-1)
    # Values that would compare or hash unlike the ints/bools they stand for are refused by name.
    for option, match in ((dict(logits_chunk="64"), "logits_chunk must be an int"),
                          (dict(mlp_chunk=8.0), "mlp_chunk must be an int"),
                          (dict(mlp_chunk=True), "mlp_chunk must be an int"),
                          (dict(remat="yes"), "remat must be a bool"),
                          (dict(flash_attention=2), "flash_attention must be a bool")):
        with pytest.raises(TypeError, match=match):
            ForwardOptions(**option)
    assert ForwardOptions(remat=np.bool_(True), mlp_chunk=np.int64(8)) == ForwardOptions(remat=True, mlp_chunk=8)


@pytest.mark.parametrize("shared,remat", [(0, False), (23, True)])  # the shared-head forward: its own layer loop
def test_mlp_in_token_chunks_gives_the_same_logits_and_gradients(shared, remat):
    """model.mlp_chunk: the same values and gradients (3 x 45 positions in chunks of 16: the last one padded),
    and no [positions, intermediate] array in the differentiated program larger than a chunk's (without it,
    the layer's 3 x 45 rows)."""
    _, graphdef, state = _model(intermediate_size=96)
    tokens, w = _tokens_and_weights()

    def loss(st, chunk):
        out = apply(graphdef, st, tokens, shared_head=shared, options=ForwardOptions(remat=remat, mlp_chunk=chunk))
        return jnp.sum(out.logits * w) + jnp.sum(jnp.sin(out.values))

    grad = {c: jax.value_and_grad(lambda st, c=c: loss(st, c)) for c in (0, 16)}
    _assert_same(*jax.jit(grad[16])(state), *jax.jit(grad[0])(state))

    def widest(c):  # positions of the largest [..., 96] array (an MLP activation or its gradient)
        shapes = [v.aval.shape for e in _equations(jax.make_jaxpr(grad[c])(state).jaxpr) for v in e.outvars]
        return max(math.prod(s[:-1]) for s in shapes if len(s) >= 2 and s[-1] == 96 and s[-2] != 32)

    assert widest(16) <= 16 < widest(0)


@pytest.mark.parametrize("tied,shared,chunk,temperature", [
    (True, 0, 16, 1.0),  # 45 positions: two whole chunks and a padded one
    (False, 0, 7, 0.7),  # an untied LM head, a tempered policy
    (True, 23, 10, 1.0),  # the shared-head forward
    (True, 0, 64, 1.0),  # one chunk longer than the sequence
])
def test_logits_chunks_give_the_same_logprobs_entropies_and_gradients(tied, shared, chunk, temperature):
    _, graphdef, state = _model(tied)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (3, 45), 0, 64)
    tokens = tokens.at[:, :23].set(tokens[0, :23])
    w = jax.random.normal(jax.random.PRNGKey(4), (3, 45))

    def loss(st, c):
        out = apply(graphdef, st, tokens, shared_head=shared, options=ForwardOptions(logits_chunk=c))
        assert isinstance(out.logits, LogitsHead) == bool(c)
        lp, v, ent = ppo.token_logprobs_and_values(out.logits, out.values, tokens, temperature)
        return jnp.sum(lp * w) + jnp.sum(ent * w) + jnp.sum(jnp.sin(v)), (lp, v, ent)

    grad = {c: jax.jit(jax.value_and_grad(lambda st, c=c: loss(st, c), has_aux=True)) for c in (0, chunk)}
    (l0, out0), g0 = grad[0](state)
    (l1, out1), g1 = grad[chunk](state)
    for a, b in zip(out1, out0):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(out0[0]))) > 1.0  # real log-probs, not zeros
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    # The hits (argmax = next token) the warm start's accuracy reads, against the full logits.
    out = apply(graphdef, state, tokens)
    chunked = apply(graphdef, state, tokens, options=ForwardOptions(logits_chunk=chunk)).logits
    _, _, hits = ppo.next_token_stats(chunked, tokens)
    want = jnp.argmax(out.logits[:, :-1], axis=-1) == tokens[:, 1:]
    np.testing.assert_array_equal(np.asarray(hits[:, 1:]), np.asarray(want))
    assert not bool(jnp.any(hits[:, 0]))


def test_logits_chunk_with_a_cache_is_an_error():
    config, graphdef, state = _model()
    with pytest.raises(ValueError, match="logits_head are for cache-free"):
        apply(graphdef, state, jnp.zeros((2, 3), jnp.int32), KVCache.init(config, 2, 16),
              options=ForwardOptions(logits_chunk=8))
