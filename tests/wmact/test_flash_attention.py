"""model.flash_attention (flash_attention.py): the online-softmax attention and its hand-written backward
give the block-causal attention's values and gradients, hold no more than a tile of scores, and reach the
model's training forwards. What it saves at scale is measured, not asserted: benchmarks/train_memory.py."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.wmact.test_remat import _assert_same, _equations, _model, _tokens_and_weights  # the remat tests' helpers
from wmact_jax.models import ForwardOptions, KVCache, apply
from wmact_jax.models.flash_attention import flash_causal_attention
from wmact_jax.models.llama import causal_attention_chunked


def _qkv(B, T, H, KV, Dh, offset, dtype=jnp.float32):
    q = jax.random.normal(jax.random.PRNGKey(0), (B, T, H, Dh), dtype)
    k, v = (jax.random.normal(jax.random.PRNGKey(i), (B, offset + T, KV, Dh), dtype) for i in (1, 2))
    return q, k, v


def _value_and_grads(fn, q, k, v, chunk, offset):
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape, jnp.float32)
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, chunk, offset).astype(jnp.float32) * w)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("B,T,H,KV,Dh,chunk,offset", [
    (1, 50, 6, 2, 8, 16, 21),  # grouped queries, a padded last tile, a shared head's offset (not whole tiles)
    (2, 40, 4, 4, 16, 16, 32),  # an offset of whole tiles, one query head per kv head
    (2, 130, 2, 1, 8, 128, 100),  # a padded query tile past the keys' last tile
    (1, 10, 2, 1, 8, 16, 0),  # shorter than one tile
])
def test_flash_attention_equals_the_block_causal_attention(B, T, H, KV, Dh, chunk, offset):
    q, k, v = _qkv(B, T, H, KV, Dh, offset)
    forward = lambda fn: jax.jit(fn, static_argnums=(3, 4))(q, k, v, chunk, offset)  # jitted: quicker than op by op
    np.testing.assert_allclose(np.asarray(forward(flash_causal_attention)),
                               np.asarray(forward(causal_attention_chunked)), atol=2e-6)
    (l0, g0), (l1, g1) = (_value_and_grads(f, q, k, v, chunk, offset)
                          for f in (causal_attention_chunked, flash_causal_attention))
    np.testing.assert_allclose(float(l1), float(l0), atol=1e-4)  # a sum of thousands of signed terms
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        assert float(jnp.max(jnp.abs(b))) > 0.1  # every input's gradient is real


def test_flash_attention_in_bfloat16_is_as_close_to_float32_as_the_reference():
    q, k, v = _qkv(2, 96, 4, 2, 16, 40)
    exact = _value_and_grads(causal_attention_chunked, q, k, v, 32, 40)[1]
    half = [_value_and_grads(f, *(x.astype(jnp.bfloat16) for x in (q, k, v)), 32, 40)[1]
            for f in (causal_attention_chunked, flash_causal_attention)]
    for e, ref, flash in zip(exact, *half):
        assert flash.dtype == jnp.bfloat16
        err = lambda g: float(jnp.max(jnp.abs(g.astype(jnp.float32) - e)))
        assert err(flash) <= 2 * err(ref) + 1e-2, (err(flash), err(ref))


def _largest_intermediate(jaxpr) -> int:
    """Elements of the largest array any equation of the program (sub-programs included) produces."""
    return max(math.prod(getattr(v.aval, "shape", ())) for e in _equations(jaxpr) for v in e.outvars)


def _grad(fn, C):
    """Gradient w.r.t. q, k, v of a loss on the attention fn (tiles / blocks of C)."""
    return jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, C, 0))), argnums=(0, 1, 2))


def test_flash_attention_holds_one_tile_of_scores():
    """Forward and backward, no array larger than the inputs or one C x C tile per (batch, head): the
    block-causal attention's backward holds [B*KV, G*C, keys] blocks (8x larger here)."""
    B, T, H, KV, Dh, C = 1, 256, 4, 2, 8, 32
    q, k, v = _qkv(B, T, H, KV, Dh, 0)
    size = lambda fn: _largest_intermediate(jax.make_jaxpr(_grad(fn, C))(q, k, v).jaxpr)
    bound = max(q.size, B * H * C * C)
    assert size(flash_causal_attention) <= bound
    assert size(causal_attention_chunked) >= 4 * bound  # the bound is not vacuous


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's compiled program")
def test_flash_attention_products_contract_the_left_operands_last_axis():
    """In the compiled forward and backward every matmul contracts its left operand's last axis: the
    form XLA:CPU runs on its fast path (a transposed left operand ran 1.8x slower in the Taxi update's
    profile; jnp's swapaxes before a matmul is folded into the product, so the jaxpr cannot show it).
    The autodiff of the block-causal attention has such products (the check is not vacuous)."""
    q, k, v = _qkv(1, 64, 4, 2, 8, 0)

    def transposed_lhs(fn):
        dots = re.findall(r"= \w+\[([\d,]*)\]\S* dot\(.*?lhs_contracting_dims=\{(\d+)\}",
                          jax.jit(_grad(fn, 16)).lower(q, k, v).compile().as_text())
        # [output shape, contracted axis]; a batched product: its output has its left operand's rank
        return [d for d in dots if int(d[1]) != d[0].count(",")]

    assert transposed_lhs(flash_causal_attention) == []
    assert transposed_lhs(causal_attention_chunked)


def test_flash_attention_shapes_are_checked():
    q, k, v = _qkv(1, 8, 4, 2, 8, 0)
    with pytest.raises(ValueError, match="keys must be offset \\+ T long"):
        flash_causal_attention(q, k, v, 4, offset=3)


@pytest.mark.parametrize("shared,remat", [(0, False), (23, True)])
def test_model_with_flash_attention_gives_the_same_logits_and_gradients(monkeypatch, shared, remat):
    from wmact_jax.models import llama

    monkeypatch.setattr(llama, "ATTENTION_CHUNK", 16)  # 45 tokens: tiled, as a training forward's
    _, graphdef, state = _model()
    tokens, w = _tokens_and_weights()

    def loss(st, flash):
        out = apply(graphdef, st, tokens, shared_head=shared, options=ForwardOptions(remat=remat, flash_attention=flash))
        return jnp.sum(out.logits * w) + jnp.sum(jnp.sin(out.values))

    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(lambda st, f=f: loss(st, f)))(state) for f in (False, True))
    _assert_same(l1, g1, l0, g0, atol=1e-4)  # gradients up to ~20
    program = str(jax.make_jaxpr(jax.grad(lambda st: loss(st, True)))(state))
    assert "name=_backward" in program  # the hand-written backward ran, not autodiff through the loops


def test_flash_attention_with_a_cache_or_with_remat_attention_is_an_error():
    from configs.base import get_config
    from wmact_jax.config_check import ConfigError, check_config

    config, graphdef, state = _model()
    with pytest.raises(ValueError, match="are for cache-free"):
        apply(graphdef, state, jnp.zeros((2, 3), jnp.int32), KVCache.init(config, 2, 16),
              options=ForwardOptions(flash_attention=True))
    with pytest.raises(ValueError, match="pick one"):
        ForwardOptions(remat_attention=True, flash_attention=True)
    c = get_config()
    c.model.remat_attention = c.model.flash_attention = True
    with pytest.raises(ConfigError, match="model.flash_attention"):
        check_config(c)
