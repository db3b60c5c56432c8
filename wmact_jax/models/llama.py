"""Llama-family decoder (Llama / Qwen2) as a Flax NNX module, with a KV cache and a value head.

Design choices (why):
- Layer weights are *stacked* on a leading `layers` axis and the forward runs `lax.scan` over them:
  compile time is independent of depth (SmolLM2 has 30 layers) and the KV cache is one array per k/v.
- Every parameter is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis names
  (('vocab', 'embed'), ('layers', 'embed', 'q_heads', 'head_dim'), ...); `sharding.py` maps them to
  mesh axes. `eager_sharding=False` keeps construction mesh-free (CPU tests, single device).
- Projections keep heads as an explicit axis ([embed, heads, head_dim]) so tensor parallelism can shard
  heads without reshapes; `hf_names.py` converts to/from HF's [out, in] matrices.
- Logits and values are float32 whatever the compute dtype (PPO log-probs need it).
- Cached calls (prefill / decode) only *read* the cache inside the layer scan: each layer attends to the old
  keys (< lengths) plus the new tokens' own k/v, and the new k/v of all layers are scattered into the cache
  once after the scan, in place (a decode step writes B x L columns instead of copying the cache). The cache
  layout "bkds" (keys [L, B, KV, Dh, S], values [L, B, KV, S, Dh], `KVCache.init`'s default) lets attention
  read it without transposes, with positions contiguous in both products (see `kv_cache.py`).
- `logits_at` computes the LM head / value head at one position per row (prefill needs only the last).
- Training forwards (no cache) attend block by block and skip the masked upper triangle
  (`causal_attention_chunked`): on CPU attention dominates a small model's step at a few hundred tokens.
- Initialisation is transformers' Llama one (normal(0.02) for every matrix, ones for norms), so a
  model from scratch starts as transformers' would. A GPT-2 style down-scaling of the residual
  projections (std / sqrt(2 L)) was used before; `experiments/probes.py init` compares the two.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from wmact_jax.models.config import ModelConfig
from wmact_jax.models.flash_attention import flash_causal_attention
from wmact_jax.models.kv_cache import KVCache


# Query block of the causal self-attention without a cache (training forwards): see causal_attention_chunked.
ATTENTION_CHUNK = 128
# Models with at most this many layers unroll their layer loop. A scan keeps each layer's residuals in
# stacked buffers (zero-filled, then written and read back by dynamic slices): ~15% of a CPU training
# step of the 4-layer scratch model. Deeper models keep the scan: unrolling 30 layers multiplies the
# compile time of every jitted forward.
UNROLL_LAYERS_UP_TO = 8


class ModelOutput(NamedTuple):
    logits: "jax.Array | LogitsHead"  # [B, T, V] float32 (a LogitsHead with ForwardOptions.lazy_logits)
    values: jax.Array | None  # [B, T] float32, or None without a value head
    cache: KVCache | None


@struct.dataclass
class LogitsHead:
    """The logits [B, T, V] not yet computed: the final-normed trunk state and the LM head's weight.

    A training loss over a large vocabulary reads it `chunk` positions at a time
    (`ppo.token_logprobs_and_values`), so the whole [B, T, V] is never held, nor kept for the backward
    pass (SmolLM2: one float32 copy for a 32 x 4096 minibatch is 24 GiB; benchmarks/train_memory.py).
    """
    hidden: jax.Array  # [B, T, D], compute dtype
    weight: jax.Array  # [V, D] (tied embedding) or [D, V] (lm_head), compute dtype
    tied: bool = struct.field(pytree_node=False)
    chunk: int = struct.field(pytree_node=False)  # positions per chunk (0: all at once)

    def logits(self, h):
        """h [..., C, D] (a chunk of `hidden`) -> logits [..., C, V] float32."""
        if self.tied:
            return jnp.einsum("...cd,vd->...cv", h, self.weight, preferred_element_type=jnp.float32)
        return jnp.einsum("...cd,dv->...cv", h, self.weight, preferred_element_type=jnp.float32)


def _param(rngs, init, shape, axes, dtype) -> nnx.Param:
    assert len(axes) == len(shape), (axes, shape)
    value = init(rngs.params(), shape, dtype) if rngs is not None else jnp.zeros(shape, dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def _normal(std):
    return lambda key, shape, dtype: (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


class Layers(nnx.Module):
    """All decoder blocks, each weight stacked on a leading `layers` axis."""

    def __init__(self, c: ModelConfig, rngs: nnx.Rngs, std: float = 0.02):
        L, D, F, H, KV, Dh = c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
        pd = jnp.dtype(c.param_dtype)
        w = _normal(std)
        self.attn_norm = _param(rngs, _ones, (L, D), ("layers", "norm"), pd)
        self.wq = _param(rngs, w, (L, D, H, Dh), ("layers", "embed", "q_heads", "head_dim"), pd)
        self.wk = _param(rngs, w, (L, D, KV, Dh), ("layers", "embed", "kv_heads", "head_dim"), pd)
        self.wv = _param(rngs, w, (L, D, KV, Dh), ("layers", "embed", "kv_heads", "head_dim"), pd)
        if c.attention_bias:
            self.bq = _param(rngs, _zeros, (L, H, Dh), ("layers", "q_heads", "head_dim"), pd)
            self.bk = _param(rngs, _zeros, (L, KV, Dh), ("layers", "kv_heads", "head_dim"), pd)
            self.bv = _param(rngs, _zeros, (L, KV, Dh), ("layers", "kv_heads", "head_dim"), pd)
        self.wo = _param(rngs, w, (L, H, Dh, D), ("layers", "q_heads", "head_dim", "embed"), pd)
        self.mlp_norm = _param(rngs, _ones, (L, D), ("layers", "norm"), pd)
        self.w_gate = _param(rngs, w, (L, D, F), ("layers", "embed", "mlp"), pd)
        self.w_up = _param(rngs, w, (L, D, F), ("layers", "embed", "mlp"), pd)
        self.w_down = _param(rngs, w, (L, F, D), ("layers", "mlp", "embed"), pd)


class ValueHead(nnx.Module):
    """Critic Linear(hidden, 1) on the final-normed trunk state (zero-init: V=0 at the start of PPO)."""

    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        pd = jnp.dtype(c.param_dtype)
        self.kernel = _param(rngs, _zeros, (c.hidden_size, 1), ("embed", None), pd)
        self.bias = _param(rngs, _zeros, (1,), (None,), pd)


# ---------------------------------------------------------------------------- math helpers
def rope_inv_freq(c: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float32) incl. 'linear' / 'llama3' scaling, as in HF."""
    dh = c.head_dim
    inv = 1.0 / (c.rope_theta ** (np.arange(0, dh, 2, dtype=np.int64).astype(np.float32) / dh))
    inv = inv.astype(np.float32)
    rs = c.rope_scaling_dict
    if c.rope_type == "linear":
        inv = inv / np.float32(rs["factor"])
    elif c.rope_type == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        scaled = np.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < hi_wl) & ~(wl > lo_wl)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_cos_sin(c: ModelConfig, positions: jax.Array, num_positions: int | None = None):
    """positions [B, T] int -> cos, sin [B, T, head_dim] float32 (HF layout: freqs repeated twice).

    num_positions (static, optional): every position lies in [0, num_positions). cos / sin are then
    computed once per position, as a [num_positions, head_dim] table, and gathered (the same values).
    Why: computed directly, XLA:CPU fuses cos / sin into every layer's RoPE multiply and recomputes
    them for every head of every layer (a prefill of SmolLM2 at batch 64 spent 6% of its time there).
    """
    inv = jnp.asarray(rope_inv_freq(c))  # [Dh/2]
    if num_positions is not None:
        cos, sin = rope_cos_sin(c, jnp.arange(int(num_positions), dtype=jnp.int32))  # [P, Dh]
        return jnp.take(cos, positions, axis=0), jnp.take(sin, positions, axis=0)
    ang = positions.astype(jnp.float32)[..., None] * inv  # [B, T, Dh/2]
    ang = jnp.concatenate([ang, ang], axis=-1)  # [B, T, Dh]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x, cos, sin):
    """x [B, T, heads, Dh]; HF rotate_half convention (first half / second half pairs)."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None, :] + rot * sin[:, :, None, :]).astype(x.dtype)


def rms_norm(x, weight, eps):
    """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def attention(q, k, v, mask):
    """Grouped-query attention (no K/V head repetition) as two batched 3-D matmuls, heads-major.

    q [B, T, H, Dh], k/v [B, S, KV, Dh], mask [B or 1, T, S] bool (True = may attend) -> [B, T, H, Dh].
    Query rows of a kv head's group are stacked ([B*KV, G*T, Dh] x [B*KV, Dh, S]): on XLA:CPU its
    forward + backward ran ~1.8x faster in a profile than the 5-D einsums it replaces.
    """
    B, T, H, Dh = q.shape
    S, KV = k.shape[1], k.shape[2]
    G = H // KV
    qh = q.reshape(B, T, KV, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B * KV, G * T, Dh)
    kh = k.transpose(0, 2, 3, 1).reshape(B * KV, Dh, S)
    vh = v.transpose(0, 2, 1, 3).reshape(B * KV, S, Dh)
    s = jnp.matmul(qh, kh, preferred_element_type=jnp.float32) / math.sqrt(Dh)  # [B*KV, G*T, S]
    s = jnp.where(mask[:, None, None, :, :], s.reshape(B, KV, G, T, S), jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype).reshape(B * KV, G * T, S)
    o = jnp.matmul(p, vh).reshape(B, KV, G, T, Dh).transpose(0, 3, 1, 2, 4)
    return o.reshape(B, T, H, Dh)


def dense(x, w, n_in: int):
    """x [..., *w.shape[:n_in]] @ w -> [..., *w.shape[n_in:]], as one 2-D matmul [N, in] @ [in, out].

    Why 2-D: XLA:CPU runs the weight gradients of batched einsums ("btd,df->btf") through transposes
    and a slower dot path; on flattened rows the scratch model's MLP gradient ran ~2x faster in a
    profile (the whole step: benchmarks/train_step.py). Same numbers up to float reassociation.
    """
    lead, w_in, w_out = x.shape[: x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
    d_in, d_out = math.prod(w_in), math.prod(w_out)
    y = x.reshape(-1, d_in) @ w.reshape(d_in, d_out)
    return y.reshape(*lead, *w_out)


# ---------------------------------------------------------------------------- the model
class Transformer(nnx.Module):
    """Decoder-only transformer policy (+ optional value head sharing the trunk).

    `model(tokens [B,T] int32, cache=None, num_new=None) -> ModelOutput(logits, values, cache)`.
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs | None = None):
        config.validate()
        self.config = config
        rngs = nnx.Rngs(0) if rngs is None else rngs
        c, pd = config, jnp.dtype(config.param_dtype)
        self.embed = _param(rngs, _normal(0.02), (c.vocab_size, c.hidden_size), ("vocab", "embed"), pd)
        self.layers = Layers(c, rngs)
        self.final_norm = _param(rngs, _ones, (c.hidden_size,), ("norm",), pd)
        if not c.tie_word_embeddings:
            self.lm_head = _param(rngs, _normal(0.02), (c.hidden_size, c.vocab_size), ("embed", "vocab"), pd)
        if c.value_head:
            self.value_head = ValueHead(c, rngs)

    def stacked_layer_weights(self) -> dict:
        """The blocks' weights in the compute dtype, each stacked on a leading layers axis."""
        cdt = jnp.dtype(self.config.dtype)
        return {k: v[...].astype(cdt) for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)}

    def layer_weights(self, fused: bool = False) -> list[dict]:
        """`stacked_layer_weights` split into one dict per layer (slices: copies on XLA:CPU).

        `fused=True` also fuses the projections that read the same input: `wqkv` [D, (H + 2 KV) Dh] and
        `w_gate_up` [D, 2F] (fewer, wider dots). Off by default: on the 2-core CPU it made the batch-64
        decode step no faster (0.96x for the small model and SmolLM2, `benchmarks/fused_projections.py`);
        the option stays for accelerators, where it is worth re-measuring.
        """
        per_layer = _split_layers(self.stacked_layer_weights(), self.config.num_layers)
        return [_fuse_projections(w) for w in per_layer] if fused else per_layer

    def __call__(self, tokens, cache: KVCache | None = None, num_new=None, *, positions=None,
                 attention_mask=None, logits_at=None, layer_weights=None,
                 detach_value_head: bool = False, shared_head: int = 0,
                 options: ForwardOptions | None = None) -> ModelOutput:
        """tokens [B, T] int32.

        cache=None: causal forward; `positions` [B, T] (RoPE positions, default 0..T-1) and
        `attention_mask` [B, T] bool (False = padding key, never attended) are optional.
        With a cache: row b's tokens take positions cache.lengths[b] + t and see keys <= that position;
        returned cache.lengths = lengths + num_new ([B] int32, default T).
        logits_at [B] int (optional): compute logits / values only at position logits_at[b] of row b
        (-> logits [B, 1, V], values [B, 1]); the LM head is then paid once per row instead of T times.
        layer_weights (optional, with a per-layer cache): `self.layer_weights()` computed once outside a
        decode loop, so the loop body does not slice (copy) every layer's weights at every step.
        detach_value_head: the value head reads the trunk's state through a stop-gradient, so a value loss
        trains the head alone and never moves the trunk the policy shares (the critic "head" of the trainer).
        shared_head H (static, cache-free forwards only): the caller promises that every row's first H
        tokens are the same (a rollout batch's chat template + system prompt). They are run once, at batch 1,
        and every row's later tokens attend to that one copy of their keys/values; the outputs over the head
        are broadcast to every row. Equal to the plain forward up to float round-off, gradients included
        (autodiff sums the rows' contributions to the shared head), for H x (B - 1) fewer token positions.
        options (static, cache-free forwards only): the memory options of a training forward
        (`ForwardOptions`: remat, logits_chunk, remat_attention, flash_attention, mlp_chunk); the default
        is none of them.
        """
        opts = NO_OPTIONS if options is None else options
        if opts.lazy_logits and (cache is not None or logits_at is not None):
            raise ValueError("ForwardOptions.logits_chunk / logits_head are for cache-free training forwards (no cache, "
                             "no logits_at)")
        c = self.config
        if shared_head and cache is None and 0 < shared_head < tokens.shape[1]:
            if positions is not None or attention_mask is not None or logits_at is not None:
                raise ValueError("shared_head= takes a plain causal forward (no positions, attention_mask, logits_at)")
            return self._forward_shared_head(jnp.asarray(tokens, jnp.int32), int(shared_head), detach_value_head,
                                             opts)
        cdt = jnp.dtype(c.dtype)
        tokens = jnp.asarray(tokens, jnp.int32)
        B, T = tokens.shape
        if opts.for_backward and cache is not None:
            raise ValueError("ForwardOptions remat / remat_attention / flash_attention / mlp_chunk are for cache-free "
                             "(training) forwards; a cached forward is not differentiated")
        if layer_weights is not None and (cache is None or not cache.per_layer):
            raise ValueError("layer_weights= is only read with a per-layer KV cache (KVCache.init(..., "
                             "per_layer=True)); pass None for a stacked cache or a cache-free forward")
        lw = self.stacked_layer_weights() if layer_weights is None else None  # given: a per-layer cache
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cdt)  # [B, T, D]

        num_positions = None  # a static bound on the positions, when known (see rope_cos_sin)
        if cache is None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
                num_positions = T
            mask = jnp.tril(jnp.ones((T, T), bool))[None]  # [1, T, T]; causal by index
            if attention_mask is not None:
                mask = mask & jnp.asarray(attention_mask, bool)[:, None, :]
        else:
            if positions is not None or attention_mask is not None:
                raise ValueError("positions/attention_mask are derived from cache.lengths when a cache is given")
            starts = cache.lengths.astype(jnp.int32)  # [B]
            positions = starts[:, None] + jnp.arange(T, dtype=jnp.int32)[None]  # [B, T]
            S = cache.max_len
            num_positions = S + T  # starts <= S (a full row's padding columns go past S: still in the table)
            # Old keys: the cache before this call, valid strictly below starts[b]. New keys: causal among
            # the T new tokens (row b's token t sees new tokens <= t).
            old_mask = jnp.arange(S, dtype=jnp.int32)[None, :] < starts[:, None]  # [B, S]
            new_mask = jnp.tril(jnp.ones((T, T), bool))  # [T, T]
            has_old = jnp.any(starts > 0)  # some row attends to keys already in the cache
        # The table costs num_positions cos/sin rows; computing them directly costs B x T rows for each
        # head's RoPE in every layer (XLA recomputes them there): take the cheaper (a batch-1 decode step
        # over a long cache computes them directly).
        if num_positions is not None and num_positions > B * T * (c.num_heads + c.num_kv_heads) * c.num_layers:
            num_positions = None
        cos, sin = rope_cos_sin(c, positions, num_positions)  # [B, T, Dh] f32
        unroll = c.num_layers if c.num_layers <= UNROLL_LAYERS_UP_TO else 1

        def block(x, w, attn_fn):
            return _block(c, x, w, cos, sin, attn_fn, opts.mlp_chunk)

        if cache is None:
            blocks = opts.attention()
            if attention_mask is None and T > ATTENTION_CHUNK:  # plain causal: skip the masked blocks
                self_attn = lambda q, k, v: blocks(q, k, v, ATTENTION_CHUNK)
            else:
                self_attn = lambda q, k, v: attention(q, k, v, mask)

            def body(x, w):
                x, _ = block(x, w, lambda q, k, v: (self_attn(q, k, v), None))
                return x, None

            if opts.remat:  # a rolled loop: unrolled, XLA:CPU undid most of the recomputation's saving (a probe)
                body, unroll = jax.checkpoint(body), 1
            x, _ = jax.lax.scan(body, x, lw, unroll=unroll)
            new_cache = None
        else:
            # The layer scan only *reads* the cache (attention to the old keys + the new tokens' own k/v)
            # and returns the new k/v per layer ([L, B, T, KV, Dh]); they are written into the cache once,
            # after the scan, so a decode step updates T columns in place instead of rewriting the cache.
            def body(x, xs):
                w, ck, cv = xs  # ck/cv: this layer's cache (read-only), "bkds" or "bskd" (see KVCache)

                def attn_fn(q, k, v):
                    kc, vc = k.astype(ck.dtype), v.astype(cv.dtype)  # what the cache will hold
                    kn, vn = kc.astype(cdt), vc.astype(cdt)
                    adt = product_dtype(ck.dtype, cdt)
                    full = lambda: cached_attention(q.astype(adt), ck.astype(adt), cv.astype(adt), kc.astype(adt),
                                                    vc.astype(adt), old_mask, new_mask, cache.layout, out_dtype=cdt)
                    if T == 1:
                        return full(), (kc, vc)
                    # Multi-token prefill into an empty cache (a first turn): skip the all-masked old keys.
                    new_only = lambda: attention(q, kn, vn, new_mask[None])
                    return jax.lax.cond(has_old, full, new_only), (kc, vc)

                x, (k, v) = block(x, w, attn_fn)
                return x, (k, v)

            if num_new is None:
                num_new = jnp.full((B,), T, jnp.int32)
            num_new = jnp.broadcast_to(jnp.asarray(num_new, jnp.int32), (B,))
            if cache.per_layer:
                # One buffer per layer: each layer writes its T new columns into its own buffer first and
                # then attends to that buffer in place (a stacked buffer is sliced, i.e. copied, per layer,
                # and reading the old buffer after an in-place write would force another copy).
                seen = jnp.arange(S, dtype=jnp.int32)[None, None, :] <= positions[:, :, None]  # [B, T, S]
                k_axis, v_axis = cache.seq_axes

                def layer_attn(ck, cv):
                    def attn_fn(q, k, v):
                        ck2 = write_layer_rows(ck, k, starts, k_axis)
                        cv2 = write_layer_rows(cv, v, starts, v_axis)
                        adt = product_dtype(ck.dtype, cdt)
                        full = lambda: layer_cache_attention(q.astype(adt), ck2.astype(adt), cv2.astype(adt), seen,
                                                             cache.layout, out_dtype=cdt)
                        if T == 1:
                            return full(), (ck2, cv2)
                        kn, vn = k.astype(ck.dtype).astype(cdt), v.astype(cv.dtype).astype(cdt)
                        new_only = lambda: attention(q, kn, vn, new_mask[None])
                        return jax.lax.cond(has_old, full, new_only), (ck2, cv2)
                    return attn_fn

                if layer_weights is None:
                    layer_weights = _split_layers(lw, c.num_layers)
                ks, vs = [], []
                for l in range(c.num_layers):
                    ck, cv = cache.layer(l)
                    x, (ck, cv) = block(x, layer_weights[l], layer_attn(ck, cv))
                    ks.append(ck)
                    vs.append(cv)
                new_cache = cache.replace(k=tuple(ks), v=tuple(vs), lengths=starts + num_new)
            else:
                x, (k_new, v_new) = jax.lax.scan(body, x, (lw, cache.k, cache.v), unroll=unroll)
                new_cache = cache.replace(k=write_rows(cache.k, k_new, starts, cache.k_seq_axis),
                                          v=write_rows(cache.v, v_new, starts, cache.v_seq_axis),
                                          lengths=starts + num_new)

        if logits_at is not None:  # only the requested position of each row goes through the heads
            idx = jnp.broadcast_to(jnp.asarray(logits_at, jnp.int32), (B,))
            x = jnp.take_along_axis(x, idx[:, None, None], axis=1)  # [B, 1, D]
        logits, values = self._heads(x, detach_value_head, opts)
        return ModelOutput(logits, values, new_cache)

    def _heads(self, x, detach_value_head: bool, opts: "ForwardOptions | None" = None):
        """Final norm, LM head and value head: x [B, T, D] -> (logits [B, T, V] f32 (a LogitsHead with
        opts.lazy_logits), values [B, T] f32 or None)."""
        opts = NO_OPTIONS if opts is None else opts
        c = self.config
        cdt = jnp.dtype(c.dtype)
        h = rms_norm(x, self.final_norm[...], c.rms_norm_eps)  # [B, T, D]
        tied = bool(c.tie_word_embeddings)
        head = LogitsHead(h, (self.embed if tied else self.lm_head)[...].astype(cdt), tied, int(opts.logits_chunk))
        logits = head if opts.lazy_logits else head.logits(h)
        values = None
        if c.value_head:
            vh = self.value_head
            hv = jax.lax.stop_gradient(h) if detach_value_head else h
            values = (jnp.einsum("btd,do->bto", hv.astype(jnp.float32), vh.kernel[...].astype(jnp.float32))
                      + vh.bias[...].astype(jnp.float32))[..., 0]  # [B, T]
        return logits, values

    def _forward_shared_head(self, tokens, H: int, detach_value_head: bool,
                             opts: ForwardOptions) -> ModelOutput:
        """The cache-free forward of rows sharing their first H tokens (see `__call__`'s shared_head)."""
        c = self.config
        cdt = jnp.dtype(c.dtype)
        B, T = tokens.shape
        R = T - H
        emb = self.embed[...]
        x_h = jnp.take(emb, tokens[:1, :H], axis=0).astype(cdt)  # [1, H, D]: the head, once
        x_r = jnp.take(emb, tokens[:, H:], axis=0).astype(cdt)  # [B, R, D]: each row's own tokens
        cos_h, sin_h = rope_cos_sin(c, jnp.arange(H, dtype=jnp.int32)[None], T)  # [1, H, Dh]
        cos_r, sin_r = rope_cos_sin(c, H + jnp.arange(R, dtype=jnp.int32)[None], T)  # [1, R, Dh]
        head_mask = jnp.tril(jnp.ones((H, H), bool))[None]
        rows = lambda a: jnp.broadcast_to(a, (B,) + a.shape[1:])  # [1, ...] -> [B, ...]: the head to every row

        blocks = opts.attention()

        def layer(xs, w):
            x_h, x_r = xs
            kv = {}

            def attn_head(q, k, v):
                kv["k"], kv["v"] = k, v  # [1, H, KV, Dh], read by the rows' attention of this layer
                if H > ATTENTION_CHUNK:  # one row: its scores are small whatever the memory options (the
                    # rows' attention below is the big one), so neither blocks nor tiles are worth a loop here
                    return causal_attention_chunked(q, k, v, ATTENTION_CHUNK), None
                return attention(q, k, v, head_mask), None

            def attn_rows(q, k, v):
                k_all = jnp.concatenate([rows(kv["k"]), k], axis=1)  # [B, H + R, KV, Dh]
                v_all = jnp.concatenate([rows(kv["v"]), v], axis=1)
                return blocks(q, k_all, v_all, ATTENTION_CHUNK, offset=H), None

            x_h, _ = _block(c, x_h, w, cos_h, sin_h, attn_head, opts.mlp_chunk)
            x_r, _ = _block(c, x_r, w, cos_r, sin_r, attn_rows, opts.mlp_chunk)
            return (x_h, x_r), None

        unroll = c.num_layers if c.num_layers <= UNROLL_LAYERS_UP_TO else 1
        if opts.remat:
            layer, unroll = jax.checkpoint(layer), 1
        (x_h, x_r), _ = jax.lax.scan(layer, (x_h, x_r), self.stacked_layer_weights(), unroll=unroll)
        logits_h, values_h = self._heads(x_h, detach_value_head, opts)  # [1, H, V]: once for every row
        logits_r, values_r = self._heads(x_r, detach_value_head, opts)
        if opts.lazy_logits:  # the head's state copied to every row: its logits are computed per row, where read
            logits = logits_r.replace(hidden=jnp.concatenate([rows(logits_h.hidden), logits_r.hidden], axis=1))
        else:
            logits = jnp.concatenate([rows(logits_h), logits_r], axis=1)
        values = None if values_h is None else jnp.concatenate([rows(values_h), values_r], axis=1)
        return ModelOutput(logits, values, None)


def _block(c: ModelConfig, x, w, cos, sin, attn_fn, mlp_chunk: int = 0):
    """One decoder layer on x [B, T, D] with its weights `w`; attn_fn(q, k, v) (after RoPE at cos/sin
    [B or 1, T, Dh]) -> (attention output [B, T, H, Dh], extra) -> (x, extra). mlp_chunk: see `__call__`."""
    B, T = x.shape[:2]
    h = rms_norm(x, w["attn_norm"], c.rms_norm_eps)
    if "wqkv" in w:  # fused (hoisted layer weights): one dot, split into [B, T, heads, Dh]
        qkv = dense(h, w["wqkv"], 1)  # [B, T, (H + 2 KV) Dh]
        nq, nk = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        q = qkv[..., :nq].reshape(B, T, c.num_heads, c.head_dim)
        k = qkv[..., nq:nq + nk].reshape(B, T, c.num_kv_heads, c.head_dim)
        v = qkv[..., nq + nk:].reshape(B, T, c.num_kv_heads, c.head_dim)
    else:
        q, k, v = dense(h, w["wq"], 1), dense(h, w["wk"], 1), dense(h, w["wv"], 1)  # [B, T, heads, Dh]
    if c.attention_bias:
        q, k, v = q + w["bq"], k + w["bk"], v + w["bv"]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o, extra = attn_fn(q, k, v)  # [B, T, H, Dh]
    x = x + dense(o, w["wo"], 2)
    return (_mlp_in_chunks(c, x, w, mlp_chunk) if mlp_chunk else _mlp_residual(c, x, w)), extra


def _mlp_residual(c: ModelConfig, x, w):
    """x [..., D] -> x + MLP(norm(x)) (SwiGLU), position by position."""
    h = rms_norm(x, w["mlp_norm"], c.rms_norm_eps)
    if "w_gate_up" in w:
        gu = dense(h, w["w_gate_up"], 1)  # [..., 2F]
        gate, up = gu[..., :c.intermediate_size], gu[..., c.intermediate_size:]
    else:
        gate, up = dense(h, w["w_gate"], 1), dense(h, w["w_up"], 1)
    return x + dense(jax.nn.silu(gate) * up, w["w_down"], 1)


def _mlp_in_chunks(c: ModelConfig, x, w, chunk: int):
    """`_mlp_residual` on x [B, T, D] `chunk` positions (of the B x T, the last chunk padded) at a time in a
    loop, each chunk rematerialised: the backward pass holds one chunk's [chunk, F] activations, not the
    layer's [B, T, F]. The MLP is position-wise, so this is the same function."""
    shape, D = x.shape, x.shape[-1]
    N = math.prod(shape[:-1])
    if N <= chunk:
        return _mlp_residual(c, x, w)
    n = -(-N // chunk)
    xs = jnp.pad(x.reshape(N, D), ((0, n * chunk - N), (0, 0))).reshape(n, chunk, D)
    mlp = jax.checkpoint(lambda w, xc: _mlp_residual(c, xc, w))
    return jax.lax.map(lambda xc: mlp(w, xc), xs).reshape(n * chunk, D)[:N].reshape(shape)


def _split_layers(lw: dict, num_layers: int) -> list[dict]:
    return [{n: a[l] for n, a in lw.items()} for l in range(num_layers)]


def _fuse_projections(w: dict) -> dict:
    """One layer's weights with wq/wk/wv -> `wqkv` [D, (H + 2 KV) Dh] and w_gate/w_up -> `w_gate_up` [D, 2F]."""
    w = dict(w)
    d = w["wq"].shape[0]
    w["wqkv"] = jnp.concatenate([w.pop(n).reshape(d, -1) for n in ("wq", "wk", "wv")], axis=1)
    w["w_gate_up"] = jnp.concatenate([w.pop("w_gate"), w.pop("w_up")], axis=1)
    return w


def layer_weights(graphdef, state, fused: bool = False) -> list[dict]:
    """`Transformer.layer_weights` of the split model (pass as `apply(..., layer_weights=)`).

    XLA:CPU copies a slice of a stacked weight every time it is read; inside a decode while_loop that is
    every layer's weights at every step. Sliced once outside the loop, the copies happen once.
    """
    return nnx.merge(graphdef, state).layer_weights(fused)


@dataclasses.dataclass(frozen=True)
class ForwardOptions:
    """The memory options of a cache-free (training) forward, one record through `apply`, the warm start's
    loss and the trainer (`Trainer.forward_options`). Static: each distinct record is its own program. The
    same numbers as without them up to float round-off, gradients included; what each saves is measured
    in benchmarks/train_memory.py.

    remat: rematerialise each layer under autodiff (`jax.checkpoint`): the backward pass keeps only each
      layer's input [B, T, D] and recomputes the rest, instead of every layer's attention weights
      ([B, H, T, T/2] chunked) and MLP activations; more FLOPs. Without autodiff it changes nothing.
    logits_chunk C > 0: `logits` is a LogitsHead, read C positions at a time by the training losses,
      instead of the [B, T, V] array.
    logits_head: `logits` is a LogitsHead (read all at once unless logits_chunk) even without chunks: a
      loss that reads only some positions (`ppo.token_logprobs_and_values` given a mask and a bound, the
      warm start's answer tokens) computes the LM head there alone (`model.trained_logits_only`).
    remat_attention: the causal self-attention by query blocks in a rolled loop, each block
      rematerialised (`causal_attention_scanned`): one block's scores alive at a time in the backward
      pass instead of a layer's, for up to 2x the attention's FLOPs.
    flash_attention (not with remat_attention): the causal self-attention with an online softmax and its
      own backward pass (`flash_attention.py`): one 128 x 128 tile of scores alive at a time, forward and
      backward, and only the causal triangle's FLOPs.
    mlp_chunk N > 0: each layer's MLP runs N token positions at a time (of the B x T), each chunk
      rematerialised: one chunk's [N, intermediate] activations alive in the backward pass instead of
      the layer's [B, T, intermediate] ones, for one more MLP forward.
    """
    remat: bool = False
    logits_chunk: int = 0
    remat_attention: bool = False
    flash_attention: bool = False
    mlp_chunk: int = 0
    logits_head: bool = False

    def __post_init__(self):
        # Plain Python values: a record is compared and hashed as part of a traced program's identity, so
        # a string, a float or an array here is refused by name rather than left to fail (or to recompile)
        # somewhere inside the forward.
        for name in ("remat", "remat_attention", "flash_attention", "logits_head"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)) and not (
                    isinstance(value, (int, np.integer)) and value in (0, 1)):
                raise TypeError(f"ForwardOptions.{name} must be a bool, got {value!r} "
                                f"({type(value).__name__})")
            object.__setattr__(self, name, bool(value))
        for name in ("logits_chunk", "mlp_chunk"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"ForwardOptions.{name} must be an int (0: off), got {value!r} "
                                f"({type(value).__name__})")
            if value < 0:
                raise ValueError(f"ForwardOptions.{name} must be >= 0 (0: off), got {value}")
            object.__setattr__(self, name, int(value))
        if self.remat_attention and self.flash_attention:
            raise ValueError("remat_attention=True and flash_attention=True are two ways to do the same thing: "
                             "pick one (flash_attention: the causal triangle's FLOPs only)")

    @property
    def lazy_logits(self) -> bool:
        """`logits` is a LogitsHead (the LM head applied by the loss, where it reads)."""
        return self.logits_chunk > 0 or self.logits_head

    @property
    def for_backward(self) -> bool:
        """Options that only change what a backward pass holds (refused with a KV cache)."""
        return self.remat or self.remat_attention or self.flash_attention or self.mlp_chunk > 0

    def attention(self):
        """The cache-free causal attention the options select: flash_attention's, remat_attention's
        rematerialised blocks, or the plain block-causal one."""
        if self.flash_attention:
            return flash_causal_attention
        return causal_attention_scanned if self.remat_attention else causal_attention_chunked


NO_OPTIONS = ForwardOptions()


def causal_attention_chunked(q, k, v, chunk: int = 128, offset: int = 0):
    """Causal self-attention that skips the masked upper triangle, block by block.

    offset (static): the queries are positions offset .. offset + T - 1 of the keys (k/v [B, offset + T,
    KV, Dh]), every key before `offset` visible to all of them (a shared head; see `shared_head`).

    q [B, T, H, Dh], k/v [B, T, KV, Dh] -> [B, T, H, Dh], equal to `attention` with a causal mask.
    Query block i (rows [i*C, (i+1)*C)) attends to the keys before the block (all visible) and to its
    own block (causal): keys [0, (i+1)*C) under a block-causal mask. The work is
    (n+1)/(2n) of the full T x T product for n blocks, forward and backward (autodiff follows the
    same blocks); on CPU, where attention over a few hundred tokens costs more than the projections
    of a small model, that is most of a training step. T need not be a multiple of C.
    """
    T = q.shape[1]
    outs = []
    for start in range(0, T, chunk):
        end = min(T, start + chunk)
        n = end - start
        # Block i sees every key before it and its own block causally: keys [0, offset + end).
        mask = jnp.concatenate([jnp.ones((n, offset + start), bool), jnp.tril(jnp.ones((n, n), bool))], axis=1)
        outs.append(attention(q[:, start:end], k[:, :offset + end], v[:, :offset + end], mask[None]))
    return jnp.concatenate(outs, axis=1)


def causal_attention_scanned(q, k, v, chunk: int = 128, offset: int = 0):
    """`causal_attention_chunked`'s result (same arguments), by query blocks in a rolled loop, each block
    rematerialised: the backward pass holds one block's scores [B*KV, G*chunk, offset + T] at a time
    instead of every block's. Each block attends to all keys under its causal mask (a loop needs one
    shape), up to 2x the FLOPs of the triangle `causal_attention_chunked` computes."""
    B, T, H, Dh = q.shape
    S = k.shape[1]  # offset + T
    n = -(-T // chunk)
    qb = jnp.pad(q, ((0, 0), (0, n * chunk - T), (0, 0), (0, 0))).reshape(B, n, chunk, H, Dh).swapaxes(0, 1)

    @jax.checkpoint
    def block(k, v, qi, i):  # qi [B, chunk, H, Dh]: queries offset + i * chunk + [0, chunk)
        qpos = offset + i * chunk + jnp.arange(chunk)
        return attention(qi, k, v, (jnp.arange(S)[None, :] <= qpos[:, None])[None])  # padded rows: discarded

    _, out = jax.lax.scan(lambda c, xs: (c, block(k, v, *xs)), None, (qb, jnp.arange(n)))  # [n, B, chunk, H, Dh]
    return out.swapaxes(0, 1).reshape(B, n * chunk, H, Dh)[:, :T]


def _two_part_softmax(s_old, s_new):
    """softmax over the concatenation of the last axes of s_old and s_new, returned as the two parts
    (no concatenated copy of the scores)."""
    m = jnp.maximum(jnp.max(s_old, axis=-1, keepdims=True), jnp.max(s_new, axis=-1, keepdims=True))
    e_old, e_new = jnp.exp(s_old - m), jnp.exp(s_new - m)
    inv = 1.0 / (jnp.sum(e_old, axis=-1, keepdims=True) + jnp.sum(e_new, axis=-1, keepdims=True))
    return e_old * inv, e_new * inv


def product_dtype(cache_dtype, compute_dtype):
    """The dtype the attention products over the cache run in: the compute dtype, or the cache's when it
    is narrower (a bfloat16 cache under a float32 model). Then the queries and the softmax weights are
    rounded to the cache's dtype, not the cache widened: the products read the cache as stored (half the
    bytes, accumulated in float32), where widening is a separate pass XLA:CPU does not fuse into the dot.
    On XLA:CPU a bfloat16 cache still decodes slower than a float32 one (README, "A bfloat16 KV cache");
    it saves memory."""
    cache_dtype, compute_dtype = jnp.dtype(cache_dtype), jnp.dtype(compute_dtype)
    return cache_dtype if cache_dtype.itemsize < compute_dtype.itemsize else compute_dtype


def cached_attention(q, ck, cv, k, v, old_mask, new_mask, layout: str = "bkds", out_dtype=None):
    """Attention of T new queries to the old cache plus the new tokens' own keys (one joint softmax).

    q [B, T, H, Dh]; ck/cv: one layer of the cache before this call, ck [B, KV, Dh, S] and cv [B, KV, S, Dh]
    ("bkds") or both [B, S, KV, Dh] ("bskd"); k/v [B, T, KV, Dh] the new tokens; old_mask [B, S] (True =
    valid old key); new_mask [T, T] (causal among the new tokens) -> [B, T, H, Dh] in `out_dtype`
    (default q's). Products accumulate in float32.
    With "bkds" both attention matmuls are plain batched [M, Dh] x [Dh, S] and [M, S] x [S, Dh] products
    (M = T * group) that read the cache in place: no per-step transpose of the whole cache.
    """
    B, T, H, Dh = q.shape
    KV = k.shape[2]
    G = H // KV
    scale = 1.0 / math.sqrt(Dh)
    neg = jnp.finfo(jnp.float32).min
    f32 = jnp.float32
    if layout == "bkds":
        qm = _group_queries(q, KV)
        s_old = jnp.einsum("bkmd,bkds->bkms", qm, ck, preferred_element_type=f32) * scale
        s_new = jnp.einsum("bkmd,bukd->bkmu", qm, k, preferred_element_type=f32) * scale
        s_old = jnp.where(old_mask[:, None, None, :], s_old, neg)
        s_new = jnp.where(jnp.repeat(new_mask, G, axis=0)[None, None], s_new, neg)
        p_old, p_new = _two_part_softmax(s_old, s_new)
        o = (jnp.einsum("bkms,bksd->bkmd", p_old.astype(cv.dtype), cv, preferred_element_type=f32)
             + jnp.einsum("bkmu,bukd->bkmd", p_new.astype(v.dtype), v, preferred_element_type=f32))
        return _ungroup(o, T).astype(out_dtype or q.dtype)
    qg = q.reshape(B, T, KV, G, Dh)
    s_old = jnp.einsum("btkgd,bskd->bkgts", qg, ck, preferred_element_type=f32) * scale
    s_new = jnp.einsum("btkgd,bukd->bkgtu", qg, k, preferred_element_type=f32) * scale
    s_old = jnp.where(old_mask[:, None, None, None, :], s_old, neg)
    s_new = jnp.where(new_mask[None, None, None], s_new, neg)
    p_old, p_new = _two_part_softmax(s_old, s_new)
    o = (jnp.einsum("bkgts,bskd->btkgd", p_old.astype(cv.dtype), cv, preferred_element_type=f32)
         + jnp.einsum("bkgtu,bukd->btkgd", p_new.astype(v.dtype), v, preferred_element_type=f32))
    return o.reshape(B, T, H, Dh).astype(out_dtype or q.dtype)


def _group_queries(q, KV: int):
    """q [B, T, H, Dh] -> [B, KV, T * G, Dh] (m = t * G + g): each kv head's queries as one matrix."""
    B, T, H, Dh = q.shape
    return q.reshape(B, T, KV, H // KV, Dh).transpose(0, 2, 1, 3, 4).reshape(B, KV, T * (H // KV), Dh)


def _ungroup(o, T: int):
    """Inverse of `_group_queries`: [B, KV, T * G, Dh] -> [B, T, H, Dh]."""
    B, KV, M, Dh = o.shape
    return o.reshape(B, KV, T, M // T, Dh).transpose(0, 2, 1, 3, 4).reshape(B, T, KV * (M // T), Dh)


def layer_cache_attention(q, ck, cv, mask, layout: str = "bkds", out_dtype=None):
    """Attention of T queries to one layer's cache buffer (the new tokens already written into it).

    q [B, T, H, Dh]; ck [B, KV, Dh, S] and cv [B, KV, S, Dh] ("bkds") or both [B, S, KV, Dh] ("bskd");
    mask [B, T, S] bool (True = may attend) -> [B, T, H, Dh] in `out_dtype` (default q's). "bkds" reads
    the buffers in place.
    """
    B, T, H, Dh = q.shape
    if layout != "bkds":
        return attention(q, ck, cv, mask).astype(out_dtype or q.dtype)
    KV = ck.shape[1]
    s = jnp.einsum("bkmd,bkds->bkms", _group_queries(q, KV), ck, preferred_element_type=jnp.float32)
    s = jnp.where(mask[:, None, :, None, :], s.reshape(B, KV, T, H // KV, -1) / math.sqrt(Dh),
                  jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(cv.dtype).reshape(B, KV, T * (H // KV), -1)
    return _ungroup(jnp.einsum("bkms,bksd->bkmd", p, cv, preferred_element_type=jnp.float32), T).astype(
        out_dtype or q.dtype)


def _write_indices(starts, B: int, T: int):
    """(rows, cols) [B, T] int32: row b's T new tokens go to positions starts[b] .. starts[b] + T - 1."""
    cols = starts[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, T))
    return rows, cols


def write_rows(buf, new, starts, seq_axis: int):
    """Write new [L, B, T, KV, Dh] into the stacked cache buffer `buf` ([L, B, ...], positions on axis
    `seq_axis`: `KVCache.k_seq_axis` / `v_seq_axis`) at positions starts[b] .. starts[b] + T - 1 of row b.

    A scatter (one update window per row); positions >= max_len are dropped (callers keep
    lengths + T <= max_len). Inside a while_loop whose carry holds `buf`, XLA updates it in place.
    """
    rows, cols = _write_indices(starts, *new.shape[1:3])
    new = new.astype(buf.dtype)
    if seq_axis == 2:  # [L, B, S, KV, Dh]: adjacent advanced indices -> update [L, B, T, KV, Dh]
        return buf.at[:, rows, cols].set(new, mode="drop", unique_indices=True)
    # advanced indices split by slices -> update [B, T, L, KV, Dh] (the other axes in their order)
    idx = (slice(None), rows) + (slice(None),) * (seq_axis - 2) + (cols,)
    return buf.at[idx].set(new.transpose(1, 2, 0, 3, 4), mode="drop", unique_indices=True)


def write_layer_rows(buf, new, starts, seq_axis: int):
    """One layer's `write_rows`: new [B, T, KV, Dh] into buf [B, ...] whose positions are axis `seq_axis`."""
    rows, cols = _write_indices(starts, *new.shape[:2])
    # rows / cols adjacent or split by slices: either way the update is [B, T, KV, Dh] (the other axes in order)
    idx = (rows,) + (slice(None),) * (seq_axis - 1) + (cols,)
    return buf.at[idx].set(new.astype(buf.dtype), mode="drop", unique_indices=True)


# ---------------------------------------------------------------------------- functional form
def create(config: ModelConfig, seed: int = 0):
    """Fresh random model in split form: (graphdef, params state)."""
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


def apply(graphdef, state, tokens, cache: KVCache | None = None, num_new=None, *, positions=None,
          attention_mask=None, logits_at=None, layer_weights=None, detach_value_head: bool = False,
          shared_head: int = 0, options: ForwardOptions | None = None) -> ModelOutput:
    """Pure function of the params `state` (from `nnx.split(model)`): jit / grad w.r.t. `state`.
    options: a training forward's `ForwardOptions` (see `Transformer.__call__`)."""
    model = nnx.merge(graphdef, state)
    return model(tokens, cache, num_new, positions=positions, attention_mask=attention_mask, logits_at=logits_at,
                 layer_weights=layer_weights, detach_value_head=detach_value_head, shared_head=shared_head,
                 options=options)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    return KVCache.init(config, batch, max_len, dtype)
