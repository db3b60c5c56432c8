"""Real checkpoints from local files: Hugging Face folders, GGUF files, Orbax exports.

`load_pretrained(path_or_name)` is the entry point; `export_hf` / `save_orbax` / `load_orbax` write and
restore policies. All errors are `CheckpointError` (a ValueError) naming the file or tensor at fault.
"""

from wmact_jax.checkpoints.hf_folder import (
    CheckpointError, SUPPORTED_HF_CLASSES, load_hf_folder, read_hf_config, read_hf_folder)
from wmact_jax.checkpoints.gguf_file import load_gguf, read_gguf
from wmact_jax.checkpoints.export import atomic_folder, export_hf, load_orbax, read_orbax_config, save_orbax
from wmact_jax.checkpoints.resolve import KNOWN_NAMES, load_pretrained, smollm2_gguf_path

__all__ = [
    "CheckpointError", "SUPPORTED_HF_CLASSES", "load_hf_folder", "read_hf_config", "read_hf_folder",
    "load_gguf", "read_gguf", "export_hf", "save_orbax", "load_orbax", "read_orbax_config", "atomic_folder",
    "load_pretrained", "smollm2_gguf_path", "KNOWN_NAMES",
]
