"""Name/layout table between Hugging Face Llama/Qwen2 state dicts and our NNX params state.

HF stores per-layer `[out, in]` matrices; we store layer-stacked `[in, heads, head_dim]`-style tensors
(see llama.py). Every conversion goes through `_table`, so loading, exporting and the shape listing
used by checkpoint readers cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wmact_jax.models.config import ModelConfig
from wmact_jax.models.llama import Transformer


class HFTensorError(ValueError):
    """Missing / unexpected / mis-shaped tensors (all of them listed in the message)."""


# Tensors some HF checkpoints carry that hold no weights (recomputed buffers).
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _table(c: ModelConfig):
    """[(hf_name, hf_shape, our_path, layer_index|None, to_ours, to_hf)].

    to_ours: HF array -> our (per-layer slice of the) param; to_hf: the inverse.
    """
    D, F, H, KV, Dh, V = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
    ident = (lambda a: a, lambda a: a)
    T = (lambda a: a.T, lambda a: a.T)

    def proj(n):  # HF [n*Dh, D] <-> ours [D, n, Dh]
        return (lambda a: a.T.reshape(D, n, Dh), lambda a: a.reshape(D, n * Dh).T)

    def bias(n):  # HF [n*Dh] <-> ours [n, Dh]
        return (lambda a: a.reshape(n, Dh), lambda a: a.reshape(n * Dh))

    o_proj = (lambda a: a.T.reshape(H, Dh, D), lambda a: a.reshape(H * Dh, D).T)  # HF [D, H*Dh] <-> [H, Dh, D]
    rows = [("model.embed_tokens.weight", (V, D), ("embed",), None, *ident),
            ("model.norm.weight", (D,), ("final_norm",), None, *ident)]
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", (V, D), ("lm_head",), None, *T))
    if c.value_head:
        rows += [("value_head.weight", (1, D), ("value_head", "kernel"), None, *T),
                 ("value_head.bias", (1,), ("value_head", "bias"), None, *ident)]
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        rows += [
            (p + "input_layernorm.weight", (D,), ("layers", "attn_norm"), i, *ident),
            (p + "self_attn.q_proj.weight", (H * Dh, D), ("layers", "wq"), i, *proj(H)),
            (p + "self_attn.k_proj.weight", (KV * Dh, D), ("layers", "wk"), i, *proj(KV)),
            (p + "self_attn.v_proj.weight", (KV * Dh, D), ("layers", "wv"), i, *proj(KV)),
            (p + "self_attn.o_proj.weight", (D, H * Dh), ("layers", "wo"), i, *o_proj),
            (p + "post_attention_layernorm.weight", (D,), ("layers", "mlp_norm"), i, *ident),
            (p + "mlp.gate_proj.weight", (F, D), ("layers", "w_gate"), i, *T),
            (p + "mlp.up_proj.weight", (F, D), ("layers", "w_up"), i, *T),
            (p + "mlp.down_proj.weight", (D, F), ("layers", "w_down"), i, *T),
        ]
        if c.attention_bias:
            rows += [
                (p + "self_attn.q_proj.bias", (H * Dh,), ("layers", "bq"), i, *bias(H)),
                (p + "self_attn.k_proj.bias", (KV * Dh,), ("layers", "bk"), i, *bias(KV)),
                (p + "self_attn.v_proj.bias", (KV * Dh,), ("layers", "bv"), i, *bias(KV)),
            ]
    return rows


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name an HF-layout checkpoint of `config` must hold -> its HF shape."""
    return {name: shape for name, shape, *_ in _table(config)}


def _abstract(config: ModelConfig):
    return nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))


def from_hf_tensors(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> nnx.State:
    """HF state dict (numpy arrays, any float dtype) -> params state for `llama.apply` / `nnx.merge`.

    Raises HFTensorError listing every missing, unexpected and mis-shaped (expected vs got) tensor.
    A tied model tolerates an `lm_head.weight` equal to the embedding; a value head absent from the
    tensors (plain HF model) is initialised to zero.
    """
    rows = _table(config)
    expected = {r[0]: r for r in rows}
    missing, bad_shape, unexpected = [], [], []
    for name, shape, path, *_ in rows:
        if name not in tensors:
            if path[0] != "value_head":
                missing.append(name)
        elif tuple(np.shape(tensors[name])) != shape:
            bad_shape.append(f"{name}: expected {shape}, got {tuple(np.shape(tensors[name]))}")
    for name in tensors:
        if name in expected or _IGNORED.match(name):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            emb = tensors.get("model.embed_tokens.weight")
            if emb is not None and np.shape(emb) == np.shape(tensors[name]) and np.array_equal(
                    np.asarray(emb, np.float32), np.asarray(tensors[name], np.float32)):
                continue
            unexpected.append("lm_head.weight (config.tie_word_embeddings=True but it differs from "
                              "model.embed_tokens.weight)")
            continue
        unexpected.append(name)
    if missing or bad_shape or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: " + ", ".join(missing))
        if bad_shape:
            parts.append(f"mis-shaped {len(bad_shape)}: " + "; ".join(bad_shape))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: " + ", ".join(sorted(unexpected)))
        raise HFTensorError(f"HF tensors do not match ModelConfig({config.architecture}, "
                            f"{config.num_layers} layers, hidden {config.hidden_size}): " + " | ".join(parts))

    _, abs_state = _abstract(config)
    pd = np.float32  # assemble in float32 on host, cast once to param_dtype
    buffers: dict[tuple, np.ndarray] = {}
    for path, var in abs_state.flat_state():
        buffers[tuple(path)] = np.zeros(var.value.shape, pd)  # value head defaults to zeros
    for name, _, path, layer, to_ours, _ in rows:
        if name not in tensors:
            continue
        a = to_ours(np.asarray(tensors[name], dtype=pd))
        if layer is None:
            buffers[path][...] = a
        else:
            buffers[path][layer] = a
    dtype = jnp.dtype(config.param_dtype)

    def fill(path, var):
        return var.replace(jnp.asarray(buffers[tuple(_key(k) for k in path)], dtype))

    return jax.tree_util.tree_map_with_path(fill, abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _key(k):
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def to_hf_tensors(config: ModelConfig, state) -> dict[str, np.ndarray]:
    """Params state (or a Transformer) -> HF-named numpy arrays (param dtype; HF layouts)."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)
    flat = {tuple(p): np.asarray(jax.device_get(v.value if isinstance(v, nnx.Variable) else v))
            for p, v in state.flat_state()}
    out = {}
    for name, shape, path, layer, _, to_hf in _table(config):
        if path not in flat:
            raise HFTensorError(f"state has no parameter {'/'.join(path)} (needed for {name})")
        a = flat[path] if layer is None else flat[path][layer]
        out[name] = np.ascontiguousarray(to_hf(a))
        assert out[name].shape == shape, (name, out[name].shape, shape)
    return out


def load_model(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> Transformer:
    """Convenience: HF tensors -> ready `Transformer` module."""
    graphdef, _ = _abstract(config)
    return nnx.merge(graphdef, from_hf_tensors(config, tensors))
