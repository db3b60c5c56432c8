"""Key/value cache for incremental decoding.

One stacked array per k/v (layer axis first) so the transformer can `lax.scan` over layers and the
whole cache is a single pytree leaf pair that shards on the batch axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from wmact_jax.models.config import ModelConfig


@struct.dataclass
class KVCache:
    k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    lengths: jax.Array  # [batch] int32: number of valid positions already written per row

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        """Empty cache (zeros, lengths 0). dtype defaults to the model's compute dtype."""
        dtype = jnp.dtype(dtype or config.dtype)
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), lengths=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]
