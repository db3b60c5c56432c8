"""Model configuration for the Llama-family policy.

`ModelConfig` is frozen and hashable so it can be a static argument of `jax.jit` and a field of the
graphdef; dict-valued HF fields (rope_scaling) are normalised to sorted tuples for that reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
_HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_HF_CLASS_TO_ARCH = {v: k for k, v in _HF_CLASS.items()}


def _freeze(d: Mapping[str, Any] | None):
    """dict -> sorted tuple of (key, value) so the config stays hashable."""
    if d is None:
        return None
    if isinstance(d, tuple):
        return d
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in dict(d).items()))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static shape/numerics description of a decoder-only transformer (Llama / Qwen2)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None  # None -> num_heads (plain MHA)
    head_dim: int | None = None  # None -> hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: Any = None  # None or HF dict {'rope_type': 'llama3'|'linear', 'factor': ..., ...}
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections only
    max_position_embeddings: int = 2048
    dtype: str = "float32"  # compute dtype: 'float32' | 'bfloat16'
    param_dtype: str = "float32"
    value_head: bool = False  # Linear(hidden, 1) critic on the final-normed trunk state
    bos_token_id: int | None = None
    eos_token_id: Any = None  # int, tuple of ints or None
    architecture: str = "llama"  # 'llama' | 'qwen2'

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None and self.num_heads:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> "ModelConfig":
        """Raise ValueError naming the offending field; returns self for chaining."""
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ModelConfig.{f} must be a positive int, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide "
                             f"num_heads={self.num_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"ModelConfig.architecture={self.architecture!r} unsupported; "
                             f"expected one of {SUPPORTED_ARCHITECTURES}")
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in ("float32", "bfloat16"):
                raise ValueError(f"ModelConfig.{f}={getattr(self, f)!r}: expected 'float32' or 'bfloat16'")
        if not self.rope_theta or self.rope_theta <= 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps or self.rms_norm_eps <= 0:
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        rs = self.rope_scaling_dict
        if rs is not None:
            rtype = rs.get("rope_type", rs.get("type", "default"))
            if rtype not in SUPPORTED_ROPE_TYPES:
                raise ValueError(f"ModelConfig.rope_scaling rope_type={rtype!r} unsupported; "
                                 f"expected one of {SUPPORTED_ROPE_TYPES}")
            need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                       "original_max_position_embeddings")}.get(rtype, ())
            missing = [k for k in need if k not in rs]
            if missing:
                raise ValueError(f"ModelConfig.rope_scaling ({rtype}) is missing {missing}")
        return self

    # --------------------------------------------------------------- helpers
    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def rope_type(self) -> str:
        rs = self.rope_scaling_dict
        return "default" if rs is None else rs.get("rope_type", rs.get("type", "default"))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else (tuple(e) if isinstance(e, tuple) else (int(e),))

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count (including the value head if any); used for sizing presets."""
        d, f, h, kv, hd, v = (self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                              self.head_dim, self.vocab_size)
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.attention_bias:
            attn += h * hd + 2 * kv * hd
        layer = attn + 3 * d * f + 2 * d
        n = v * d + self.num_layers * layer + d + (0 if self.tie_word_embeddings else d * v)
        return n + (d + 1 if self.value_head else 0)

    # --------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, vocab_size: int, **kw) -> "ModelConfig":
        """~1M parameters + 128 per vocab entry (tied): fast enough for CPU RL experiments and tests."""
        base = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_layers=4,
                    num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, max_position_embeddings=2048, value_head=True)
        base.update(kw)
        return cls(**base)

    @classmethod
    def small(cls, vocab_size: int, **kw) -> "ModelConfig":
        """~10-20M parameters: a from-scratch policy for a GPU/TPU or a patient CPU."""
        base = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_layers=8,
                    num_heads=8, num_kv_heads=4, tie_word_embeddings=True, max_position_embeddings=4096,
                    value_head=True)
        base.update(kw)
        return cls(**base)

    # -------------------------------------------------------------- HF I/O
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "ModelConfig":
        """Build from a LlamaForCausalLM / Qwen2ForCausalLM config.json dict (transformers 4.x or 5.x)."""
        d = dict(d)
        mt = d.get("model_type")
        if mt is None:
            archs = d.get("architectures") or []
            mt = next((_HF_CLASS_TO_ARCH[a] for a in archs if a in _HF_CLASS_TO_ARCH), None)
        if mt not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"config.json model_type={mt!r} (architectures={d.get('architectures')}) is "
                             f"unsupported; expected one of {SUPPORTED_ARCHITECTURES}")
        for req in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if d.get(req) is None:
                raise ValueError(f"config.json ({mt}) is missing required field {req!r}")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"config.json field 'hidden_act'={act!r} unsupported (SwiGLU needs 'silu')")
        if d.get("mlp_bias"):
            raise ValueError("config.json field 'mlp_bias'=True is unsupported")
        # transformers 5.x nests rope settings in rope_parameters; 4.x uses rope_theta + rope_scaling.
        rp = d.get("rope_parameters")
        if isinstance(rp, dict) and "full_attention" in rp:
            rp = rp["full_attention"]
        rope_theta = d.get("rope_theta")
        scaling = d.get("rope_scaling")
        if isinstance(rp, dict):
            rope_theta = rp.get("rope_theta", rope_theta)
            rtype = rp.get("rope_type", rp.get("type", "default"))
            if rtype != "default":
                scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        if scaling is not None:
            scaling = dict(scaling)
            if "type" in scaling and "rope_type" not in scaling:
                scaling["rope_type"] = scaling.pop("type")
            if scaling.get("rope_type", "default") == "default":
                scaling = None
        if d.get("use_sliding_window"):
            raise ValueError("config.json field 'use_sliding_window'=True is unsupported")
        heads = d["num_attention_heads"]
        kw = dict(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"], num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", mt == "qwen2")),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            architecture=mt,
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf_dict(self) -> dict:
        """config.json dict that transformers' LlamaForCausalLM / Qwen2ForCausalLM can load."""
        rp = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rp = {**self.rope_scaling_dict, "rope_theta": self.rope_theta}
        d = {
            "architectures": [_HF_CLASS[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "rope_parameters": rp,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "torch_dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.architecture == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=False)
        elif not self.attention_bias:
            raise ValueError("ModelConfig.attention_bias=False cannot be exported as qwen2 "
                             "(Qwen2 always has q/k/v biases); use architecture='llama'")
        else:
            d.update(use_sliding_window=False, sliding_window=None)
        return d
