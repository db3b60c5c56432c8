"""Read Hugging Face Llama / Qwen2 checkpoint folders into our model, from local files only.

A folder holds `config.json` and either `model.safetensors` or shards listed by
`model.safetensors.index.json`. Tensors are read with safetensors' numpy API (bfloat16 works once
`ml_dtypes` is imported, which registers the dtype with numpy), so neither torch nor a hub is needed:
a user with a GPU/TPU can point the framework at a downloaded Qwen2.5 / Llama / SmolLM folder.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_dtypes  # noqa: F401  (registers 'bfloat16' with numpy so safetensors' numpy API can read it)
import numpy as np

SUPPORTED_HF_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message names the file, tensor or field at fault."""


def np_dtype(dtype: Any) -> np.dtype:
    """'float32' | 'bfloat16' | numpy / jax dtype -> numpy dtype (bfloat16 via ml_dtypes)."""
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(dtype)
    except TypeError as e:
        raise CheckpointError(f"unsupported dtype {dtype!r}") from e


def dtype_name(dtype: Any) -> str:
    """Normalise a dtype to the ModelConfig spelling ('float32' / 'bfloat16')."""
    name = np_dtype(dtype).name
    if name not in ("float32", "bfloat16"):
        raise CheckpointError(f"dtype {name!r} unsupported for model parameters; use 'float32' or 'bfloat16'")
    return name


def read_hf_config(folder: str | os.PathLike) -> dict:
    """config.json of a supported causal-LM folder, with a clear error for anything else."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder {folder!r} does not exist (or is not a folder)")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder!r} has no config.json; expected a Hugging Face checkpoint folder")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    archs = cfg.get("architectures") or []
    if not archs and cfg.get("model_type") in _MODEL_TYPES:
        archs = [_MODEL_TYPES[cfg["model_type"]]]
    if not any(a in SUPPORTED_HF_CLASSES for a in archs):
        raise CheckpointError(
            f"{path}: unsupported architecture {archs or cfg.get('model_type')!r} "
            f"(model_type={cfg.get('model_type')!r}); supported: {', '.join(SUPPORTED_HF_CLASSES)}")
    return cfg


def safetensors_files(folder: str | os.PathLike) -> tuple[list[str], dict[str, str] | None]:
    """The weight files of a folder (sharded via the index, else model.safetensors) and the weight map."""
    folder = os.fspath(folder)
    index = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map'")
        files = sorted(set(weight_map.values()))
        missing = [s for s in files if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise CheckpointError(f"{folder!r}: shard file(s) {missing} listed in {SAFETENSORS_INDEX} are missing")
        return [os.path.join(folder, s) for s in files], weight_map
    single = os.path.join(folder, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return [single], None
    others = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".safetensors")))
    hint = (f" (found {others}: only safetensors are read; re-save with save_pretrained(safe_serialization=True))"
            if others else "")
    raise CheckpointError(f"{folder!r} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}{hint}")


def read_safetensors(files: list[str], weight_map: Mapping[str, str] | None = None,
                     dtype: Any = "float32") -> dict[str, np.ndarray]:
    """All tensors of the given files as numpy arrays of `dtype` (bf16 on disk is upcast exactly)."""
    from safetensors import safe_open

    target = np_dtype(dtype)
    out: dict[str, np.ndarray] = {}
    for path in files:
        try:
            with safe_open(path, framework="np") as f:
                for name in f.keys():
                    if name in out:
                        raise CheckpointError(f"tensor {name!r} appears in more than one shard ({path})")
                    arr = f.get_tensor(name)
                    out[name] = arr if arr.dtype == target else arr.astype(target)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read {path}: {e}") from e
    if weight_map is not None:
        listed, found = set(weight_map), set(out)
        if listed - found:
            raise CheckpointError(f"tensors listed in {SAFETENSORS_INDEX} but absent from the shards: "
                                  f"{sorted(listed - found)[:8]}")
    return out


def read_hf_folder(folder: str | os.PathLike, dtype: Any = "float32") -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, {HF tensor name: numpy array of dtype}) of a Llama / Qwen2 folder."""
    cfg = read_hf_config(folder)
    files, weight_map = safetensors_files(folder)
    return cfg, read_safetensors(files, weight_map, dtype)


def model_config_from_hf(hf_config: Mapping[str, Any], dtype: Any = "float32", **overrides):
    """ModelConfig for HF config dict; dtype sets both param and compute dtype unless overridden."""
    from wmact_jax.models.config import ModelConfig

    name = dtype_name(dtype)
    kw = {"dtype": name, "param_dtype": name}
    kw.update(overrides)
    try:
        return ModelConfig.from_hf_dict(hf_config, **kw)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(e)) from e


def build_model(config, tensors: Mapping[str, np.ndarray]):
    """HF-named tensors -> our Transformer; hf_names' ValueErrors (missing/extra/mis-shaped) become CheckpointError."""
    from wmact_jax.models import hf_names

    try:
        return hf_names.load_model(config, dict(tensors))
    except CheckpointError:
        raise
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"tensors do not fit the config: {e}") from e


def load_hf_folder(folder: str | os.PathLike, dtype: Any = "float32", **config_overrides):
    """(ModelConfig, Transformer) from a Hugging Face LlamaForCausalLM / Qwen2ForCausalLM folder."""
    hf_cfg = read_hf_config(folder)
    config = model_config_from_hf(hf_cfg, dtype, **config_overrides)
    files, weight_map = safetensors_files(folder)
    tensors = read_safetensors(files, weight_map, config.param_dtype)
    return config, build_model(config, tensors)
