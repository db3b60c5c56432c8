"""Policy model: Llama-family decoder (Flax NNX), KV cache, sharding, Hugging Face name table."""

from wmact_jax.models.config import ModelConfig
from wmact_jax.models.kv_cache import KVCache
from wmact_jax.models.llama import ForwardOptions, ModelOutput, Transformer, apply, create, init_cache
from wmact_jax.models import sharding
from wmact_jax.models.sharding import make_mesh, shard_state, shard_batch, shard_cache, state_shardings
from wmact_jax.models.hf_names import from_hf_tensors, hf_shapes, load_model, to_hf_tensors, HFTensorError

__all__ = [
    "ModelConfig", "KVCache", "ForwardOptions", "ModelOutput", "Transformer", "apply", "create", "init_cache",
    "from_hf_tensors", "to_hf_tensors", "load_model", "hf_shapes", "HFTensorError",
    "sharding", "make_mesh", "shard_state", "shard_batch", "shard_cache", "state_shardings",
]
