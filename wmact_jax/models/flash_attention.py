"""Causal self-attention with an online softmax and a hand-written backward pass (FlashAttention-2's
algorithm in plain JAX), for the training forwards (`model.flash_attention`).

Why: the other training attentions hold, in the backward pass, a [B*KV, G*C, keys] block of scores
(`causal_attention_scanned`, for up to 2x the triangle's FLOPs) or every block of a layer
(`causal_attention_chunked`). This one never holds more than one C x C tile per (batch, kv head): the
forward keeps a running max and sum per query row and saves only the output and its log-sum-exp; the
backward recomputes each tile's probabilities from them. Only the tiles on or below the diagonal are
visited (loops with a data-dependent trip count), so the FLOPs are the triangle's, forward and backward
(five matmuls a tile backward, the scores' recomputation among them, against two forward).

Layout: q [B, T, H, Dh], k/v [B, offset + T, KV, Dh] (grouped-query: H = G x KV), the queries at
positions offset .. offset + T - 1 of the keys (offset > 0: a shared head every query sees). Inside, the
G query heads of a kv head are stacked as in `llama.attention`: [B*KV, G, T, Dh] queries, [B*KV, S, Dh]
keys, so every product is one batched 3-D matmul.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_NEG = jnp.finfo(jnp.float32).min


def flash_causal_attention(q, k, v, chunk: int = 128, offset: int = 0):
    """q [B, T, H, Dh], k/v [B, offset + T, KV, Dh] -> [B, T, H, Dh] (q's dtype): equal, up to float
    round-off, to `llama.causal_attention_chunked(q, k, v, chunk, offset)`, gradients included.
    chunk (static): the tile's side; T need not be a multiple of it."""
    B, T, H, Dh = q.shape
    S, KV = k.shape[1], k.shape[2]
    if S != offset + T or v.shape != k.shape or H % KV:
        raise ValueError(f"flash_causal_attention: q {q.shape}, k {k.shape}, v {v.shape}, offset {offset}: keys "
                         "must be offset + T long and H a multiple of KV")
    G = H // KV
    n, m = -(-T // chunk), -(-S // chunk)  # query tiles, key tiles
    qh = q.reshape(B, T, KV, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B * KV, G, T, Dh)
    qh = jnp.pad(qh, ((0, 0), (0, 0), (0, n * chunk - T), (0, 0)))  # [B*KV, G, n*C, Dh]
    pad_k = lambda x: jnp.pad(x.transpose(0, 2, 1, 3).reshape(B * KV, S, Dh), ((0, 0), (0, m * chunk - S), (0, 0)))
    o = _flash(qh, pad_k(k), pad_k(v), chunk, offset)  # [B*KV, G, n*C, Dh]
    return o[:, :, :T].reshape(B, KV, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def _tile_scores(qi, kj, i, j, chunk: int, offset: int):
    """Scores of query tile i against key tile j, scaled and causally masked: qi [BK, G, C, Dh], kj [BK, C, Dh]
    -> [BK, G*C, C] float32 (rows: the G heads' C queries, head-major)."""
    BK, G, C, Dh = qi.shape
    s = jnp.matmul(qi.reshape(BK, G * C, Dh), kj.swapaxes(1, 2), preferred_element_type=jnp.float32)
    s = s / math.sqrt(Dh)
    qpos = offset + i * chunk + jnp.arange(chunk)  # the query tile's positions among the keys
    kpos = j * chunk + jnp.arange(chunk)
    visible = jnp.tile(kpos[None, :] <= qpos[:, None], (G, 1))  # [G*C, C]
    return jnp.where(visible[None], s, _NEG)


def _last_key_tile(i, chunk: int, offset: int, m: int):
    """The last key tile query tile i sees: the one holding its last query's position offset + (i+1) C - 1
    (a padded query past the keys: the last of the m tiles)."""
    return jnp.minimum((offset + (i + 1) * chunk - 1) // chunk, m - 1)


@functools.partial(jax.jit, static_argnums=(3, 4))  # named in the caller's jaxpr: pjit[name=_forward]
def _forward(qh, kh, vh, chunk: int, offset: int):
    """-> (o [BK, G, n*C, Dh] in q's dtype, lse [BK, G, n*C] float32): the online softmax, query tile by
    query tile, each over key tiles 0 .. _last_key_tile(i) only."""
    BK, G, TP, Dh = qh.shape
    n, m = TP // chunk, kh.shape[1] // chunk

    def query_tile(_, i):
        qi = jax.lax.dynamic_slice_in_dim(qh, i * chunk, chunk, axis=2)  # [BK, G, C, Dh]

        def key_tile(j, carry):
            mx, l, acc = carry  # [BK, G*C] running max and sum, [BK, G*C, Dh] running output (unnormalised)
            kj = jax.lax.dynamic_slice_in_dim(kh, j * chunk, chunk, axis=1)
            vj = jax.lax.dynamic_slice_in_dim(vh, j * chunk, chunk, axis=1)
            s = _tile_scores(qi, kj, i, j, chunk, offset)
            mx_new = jnp.maximum(mx, jnp.max(s, axis=-1))
            p = jnp.exp(s - mx_new[..., None])
            scale = jnp.exp(mx - mx_new)
            acc = acc * scale[..., None] + jnp.matmul(p.astype(vh.dtype), vj, preferred_element_type=jnp.float32)
            return mx_new, l * scale + jnp.sum(p, axis=-1), acc

        init = (jnp.full((BK, G * chunk), _NEG, jnp.float32), jnp.zeros((BK, G * chunk), jnp.float32),
                jnp.zeros((BK, G * chunk, Dh), jnp.float32))
        # Key tile 0 holds position 0, which every query sees: no row's sum stays 0.
        mx, l, acc = jax.lax.fori_loop(0, _last_key_tile(i, chunk, offset, m) + 1, key_tile, init)
        o = (acc / l[..., None]).astype(qh.dtype).reshape(BK, G, chunk, Dh)
        return None, (o, (mx + jnp.log(l)).reshape(BK, G, chunk))

    _, (o, lse) = jax.lax.scan(query_tile, None, jnp.arange(n))  # [n, BK, G, C, Dh], [n, BK, G, C]
    return (jnp.moveaxis(o, 0, 2).reshape(BK, G, TP, Dh), jnp.moveaxis(lse, 0, 2).reshape(BK, G, TP))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _flash(qh, kh, vh, chunk: int, offset: int):
    return _forward(qh, kh, vh, chunk, offset)[0]


def _flash_fwd(qh, kh, vh, chunk, offset):
    o, lse = _forward(qh, kh, vh, chunk, offset)
    return o, (qh, kh, vh, o, lse)


def _flash_bwd(chunk, offset, res, do):
    return _backward(*res, do, chunk, offset)


@functools.partial(jax.jit, static_argnums=(6, 7))  # named in the caller's jaxpr: pjit[name=_backward]
def _backward(qh, kh, vh, o, lse, do, chunk: int, offset: int):
    """FlashAttention-2's backward: key tile by key tile (dK, dV of the tile accumulate in the loop's
    carry), over the query tiles that see it; dQ accumulates in one float32 buffer.

    Every tile is computed transposed (keys x queries: sT = K Q^T, pT, dpT, dsT), so that each of the five
    products contracts the last axis of its left operand: dV += pT dO, dK += dsT Q, dQ^T += K^T dsT. With
    the untransposed tile, dK and dV contract the query axis of both operands, a form XLA:CPU leaves out
    of its fast matmul path (1.8x the time per product in a profile of the Taxi PPO update; the update
    went from 1.31x to 1.10x remat's alone, `benchmarks/train_memory.py`). The log-sum-exps and the
    rowsums are laid out tile by tile for the same reason: sliced out of [BK, G, TP] inside the tile's
    elementwise fusion, they made it ~3x slower."""
    BK, G, TP, Dh = qh.shape
    n, m = TP // chunk, kh.shape[1] // chunk
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [BK, G, n*C]: rowsum(dO * O)
    rows = lambda x, i: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=2)  # query tile i of [BK, G, TP, ...]
    by_tile = lambda x: x.reshape(BK, G, n, chunk).transpose(2, 0, 1, 3).reshape(n, BK, G * chunk)
    lse_t, delta_t = by_tile(lse), by_tile(delta)  # [n, BK, G*C]: query tile i's rows contiguous
    khT = kh.swapaxes(1, 2)  # [BK, Dh, m*C]: K^T stored, so that dQ's product is not a transposed one
    scale = 1 / math.sqrt(Dh)
    qoff = np.tile(np.arange(chunk, dtype=np.int32), G)  # [G*C]: a query row's place in its tile

    def key_tile(dqT, j):
        kj = jax.lax.dynamic_slice_in_dim(kh, j * chunk, chunk, axis=1)  # [BK, C, Dh]
        vj = jax.lax.dynamic_slice_in_dim(vh, j * chunk, chunk, axis=1)
        kjT = jax.lax.dynamic_slice_in_dim(khT, j * chunk, chunk, axis=2)  # [BK, Dh, C]
        kpos = j * chunk + jnp.arange(chunk)

        def query_tile(i, carry):
            dqT, dk, dv = carry  # [BK, Dh, G, TP] float32, [BK, C, Dh] float32 twice
            qi, doi = rows(qh, i).reshape(BK, G * chunk, Dh), rows(do, i).reshape(BK, G * chunk, Dh)
            sT = jnp.matmul(kj, qi.swapaxes(1, 2), preferred_element_type=jnp.float32) * scale  # [BK, C, G*C]
            visible = kpos[:, None] <= (offset + i * chunk + qoff)[None, :]  # [C, G*C]
            pT = jnp.where(visible[None], jnp.exp(sT - lse_t[i][:, None, :]), 0.0)
            dv = dv + jnp.matmul(pT.astype(do.dtype), doi, preferred_element_type=jnp.float32)
            dpT = jnp.matmul(vj, doi.swapaxes(1, 2), preferred_element_type=jnp.float32)  # [BK, C, G*C]
            dsT = (pT * (dpT - delta_t[i][:, None, :]) * scale).astype(qh.dtype)
            dk = dk + jnp.matmul(dsT, qi, preferred_element_type=jnp.float32)
            dqiT = jnp.matmul(kjT, dsT, preferred_element_type=jnp.float32).reshape(BK, Dh, G, chunk)
            at = i * chunk
            dqT = jax.lax.dynamic_update_slice_in_dim(
                dqT, jax.lax.dynamic_slice_in_dim(dqT, at, chunk, axis=3) + dqiT, at, axis=3)
            return dqT, dk, dv

        # The first query tile whose last query sees key tile j's first key (j C).
        first = jnp.maximum(0, (j * chunk - offset) // chunk)
        zeros = jnp.zeros((BK, chunk, Dh), jnp.float32)
        dqT, dk, dv = jax.lax.fori_loop(first, n, query_tile, (dqT, zeros, zeros))
        return dqT, (dk.astype(kh.dtype), dv.astype(vh.dtype))  # stacked in the inputs' dtype

    dqT, (dk, dv) = jax.lax.scan(key_tile, jnp.zeros((BK, Dh, G, TP), jnp.float32), jnp.arange(m))  # [m, BK, C, Dh]
    tiles = lambda x: jnp.moveaxis(x, 0, 1).reshape(BK, m * chunk, Dh)
    return dqT.transpose(0, 2, 3, 1).astype(qh.dtype), tiles(dk), tiles(dv)


_flash.defvjp(_flash_fwd, _flash_bwd)
