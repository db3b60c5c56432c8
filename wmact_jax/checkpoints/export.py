"""Export a policy: as a Hugging Face folder (for transformers / vLLM users) and as an Orbax checkpoint.

Both writers build the checkpoint in a sibling temp folder and rename it into place, so a crash
never leaves a half-written checkpoint under the final name, and neither overwrites a non-empty
folder unless `overwrite=True`.

HF export drops the value head (transformers' causal-LM classes have none); Orbax keeps every
parameter and stores the full ModelConfig beside it as `model_config.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from typing import Any

import ml_dtypes  # noqa: F401  (bfloat16 numpy arrays for safetensors)
import numpy as np

from wmact_jax.checkpoints.hf_folder import SAFETENSORS_FILE, CheckpointError

MODEL_CONFIG_FILE = "model_config.json"
ORBAX_PARAMS_DIR = "params"
FORMAT_TAG = "wmact-jax-orbax-v1"


# ------------------------------------------------------------------ atomic folders
@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, overwrite: bool = False):
    """Yield a fresh temp folder next to `folder`; on success it replaces `folder`, on error it vanishes."""
    final = os.path.abspath(os.fspath(folder))
    if os.path.exists(final):
        if not os.path.isdir(final):
            raise CheckpointError(f"{final!r} exists and is not a folder")
        if os.listdir(final) and not overwrite:
            raise CheckpointError(f"{final!r} is not empty; pass overwrite=True to replace it")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(final):
        old = os.path.join(parent, f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ helpers
def _split_model(model_or_params, config=None):
    """(config, nnx.State of Params) from a Transformer, or from (params state + config)."""
    from flax import nnx

    if isinstance(model_or_params, nnx.Module):
        cfg = config if config is not None else getattr(model_or_params, "config", None)
        state = nnx.state(model_or_params, nnx.Param)
    else:
        cfg, state = config, model_or_params
    if cfg is None:
        raise CheckpointError("a ModelConfig is needed: pass config= when exporting a bare params state")
    return cfg, state


def config_to_json(config) -> dict:
    """Full ModelConfig (every field, incl. value_head and dtypes) as a JSON-safe dict."""
    d = dataclasses.asdict(config)
    d["rope_scaling"] = config.rope_scaling_dict
    if isinstance(d.get("eos_token_id"), tuple):
        d["eos_token_id"] = list(d["eos_token_id"])
    return d


def config_from_json(d: dict):
    from wmact_jax.models.config import ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(f"{MODEL_CONFIG_FILE} has fields this ModelConfig does not know: {unknown}")
    try:
        return ModelConfig(**d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{MODEL_CONFIG_FILE}: {e}") from e


# ------------------------------------------------------------------ Hugging Face folder
def export_hf(folder: str | os.PathLike, model_or_params, config=None, *, tokenizer=None,
              overwrite: bool = False, dtype: Any = None, generation_config: dict | None = None) -> str:
    """Write config.json + model.safetensors (+ generation_config.json, tokenizer files) to `folder`.

    `transformers.AutoModelForCausalLM.from_pretrained(folder)` loads the result. `dtype` (e.g.
    'bfloat16') casts the stored weights; default: the params' own dtype. Returns the folder path.
    """
    from wmact_jax.checkpoints.hf_folder import np_dtype
    from wmact_jax.models import hf_names

    cfg, state = _split_model(model_or_params, config)
    tensors = hf_names.to_hf_tensors(cfg, state)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # transformers re-ties it; saving both would share storage
    for k in [k for k in tensors if k.startswith("value_head.")]:
        del tensors[k]  # transformers' causal-LM classes have no critic
    target = np_dtype(dtype) if dtype is not None else None
    tensors = {k: np.ascontiguousarray(np.asarray(v) if target is None else np.asarray(v).astype(target))
               for k, v in tensors.items()}
    hf_cfg = cfg.to_hf_dict()
    stored = next(iter(tensors.values())).dtype.name
    hf_cfg["torch_dtype"] = stored
    hf_cfg["dtype"] = stored
    gen = {"bos_token_id": cfg.bos_token_id,
           "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id}
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
        gen["pad_token_id"] = tokenizer.pad_token_id
    gen.update(generation_config or {})
    gen = {k: v for k, v in gen.items() if v is not None}

    from safetensors.numpy import save_file

    with atomic_folder(folder, overwrite) as tmp:
        save_file(tensors, os.path.join(tmp, SAFETENSORS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_cfg, f, indent=2, sort_keys=True)
        with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(gen, f, indent=2, sort_keys=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return os.path.abspath(os.fspath(folder))


# ------------------------------------------------------------------ Orbax
def save_orbax(folder: str | os.PathLike, model_or_params, config=None, *, tokenizer=None,
               overwrite: bool = False) -> str:
    """Save params with Orbax's StandardCheckpointer under `folder/params` and the config as JSON
    (and the tokenizer's files, if given, so `load_pretrained(folder)` finds it).

    Single-process write (the temp-folder rename is local-filesystem atomicity); returns the folder path.
    """
    import orbax.checkpoint as ocp

    cfg, state = _split_model(model_or_params, config)
    pure = state.to_pure_dict() if hasattr(state, "to_pure_dict") else state
    with atomic_folder(folder, overwrite) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, ORBAX_PARAMS_DIR), pure)
            ckptr.wait_until_finished()
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT_TAG, "model_config": config_to_json(cfg)}, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return os.path.abspath(os.fspath(folder))


def read_orbax_config(folder: str | os.PathLike):
    path = os.path.join(os.fspath(folder), MODEL_CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{os.fspath(folder)!r} has no {MODEL_CONFIG_FILE}: not a wmact-jax Orbax checkpoint")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    if d.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: format {d.get('format')!r}, expected {FORMAT_TAG!r}")
    return config_from_json(d["model_config"])


def load_orbax(folder: str | os.PathLike, sharding=None):
    """(ModelConfig, Transformer) restored from `save_orbax` output.

    The target tree comes from `nnx.eval_shape` (no random init); `sharding` (a jax Sharding, default:
    the first device) places every restored array.
    """
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from wmact_jax.models.llama import Transformer

    cfg = read_orbax_config(folder)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
    sh = sharding if sharding is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abs_params.to_pure_dict())
    path = os.path.abspath(os.path.join(os.fspath(folder), ORBAX_PARAMS_DIR))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(path, target)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"cannot restore Orbax params from {path}: {e}") from e
    abs_params.replace_by_pure_dict(restored)
    return cfg, nnx.merge(graphdef, abs_params, rest)
