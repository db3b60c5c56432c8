"""Tokenizers: a small scratch tokenizer for from-scratch models, and a torch-free GGUF tokenizer.

Both are `transformers.PreTrainedTokenizerFast` objects with a ChatML chat template; the in-graph
text codec built on them is `wmact_jax.codec`.
"""

from __future__ import annotations

import os

from wmact_jax.tokenization.gguf_tokenizer import smollm2_gguf_path, tokenizer_from_gguf
from wmact_jax.tokenization.scratch import build_scratch_tokenizer

__all__ = ["build_scratch_tokenizer", "tokenizer_from_gguf", "smollm2_gguf_path", "load_tokenizer"]


def load_tokenizer(spec: str):
    """'scratch' -> a fresh scratch tokenizer; a `.gguf` file -> `tokenizer_from_gguf`; a folder with
    tokenizer.json (a saved scratch tokenizer or a Hugging Face checkpoint) -> `AutoTokenizer`."""
    if spec == "scratch":
        return build_scratch_tokenizer()
    if spec.endswith(".gguf"):
        return tokenizer_from_gguf(spec)
    if os.path.isdir(spec):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec)
    raise ValueError(f"unknown tokenizer spec {spec!r}: 'scratch', a .gguf file or a tokenizer folder")
