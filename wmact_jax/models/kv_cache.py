"""Key/value cache for incremental decoding.

One stacked array per k/v (layer axis first) so the transformer can `lax.scan` over layers and the
whole cache is a single pytree leaf pair that shards on the batch axis.

Two memory layouts (a static field, so it is part of the pytree structure and never traced):
- "bksd": [layers, batch, kv_heads, max_len, head_dim], what `KVCache.init` allocates. Attention reads
  each (row, kv head) as one contiguous [max_len, head_dim] matrix: no transpose of the cache per step.
- "bskd": [layers, batch, max_len, kv_heads, head_dim], the default when constructing `KVCache(k, v,
  lengths)` directly (the original layout; kept for caches built by hand, e.g. in tests).
The model and the sampler accept both; use `max_len` / `batch` / `prefix` rather than indexing `k`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from wmact_jax.models.config import ModelConfig

LAYOUTS = ("bksd", "bskd")


@struct.dataclass
class KVCache:
    k: jax.Array  # "bksd": [layers, batch, kv_heads, max_len, head_dim]; "bskd": [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array  # same shape as k
    lengths: jax.Array  # [batch] int32: number of valid positions already written per row
    layout: str = struct.field(pytree_node=False, default="bskd")

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=None, layout: str = "bksd") -> "KVCache":
        """Empty cache (zeros, lengths 0). dtype defaults to the model's compute dtype."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        dtype = jnp.dtype(dtype or config.dtype)
        L, KV, Dh = config.num_layers, config.num_kv_heads, config.head_dim
        shape = (L, batch, KV, max_len, Dh) if layout == "bksd" else (L, batch, max_len, KV, Dh)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), lengths=jnp.zeros((batch,), jnp.int32),
                   layout=layout)

    @property
    def seq_axis(self) -> int:
        """Axis of k / v that indexes positions (3 for "bksd", 2 for "bskd")."""
        return 3 if self.layout == "bksd" else 2

    @property
    def max_len(self) -> int:
        return self.k.shape[self.seq_axis]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def logical_axes(self) -> tuple[str, ...]:
        """Logical axis names of k / v (for sharding rules)."""
        if self.layout == "bksd":
            return ("layers", "batch", "kv_heads", "length", "head_dim")
        return ("layers", "batch", "length", "kv_heads", "head_dim")

    def prefix(self, w: int) -> "KVCache":
        """The cache restricted to positions [0, w) (a copy of that window; lengths unchanged)."""
        sl = lambda x: jax.lax.slice_in_dim(x, 0, w, axis=self.seq_axis)
        return self.replace(k=sl(self.k), v=sl(self.v))

    def with_prefix(self, small: "KVCache") -> "KVCache":
        """Write a `prefix(w)` cache back over positions [0, w); lengths are taken from `small`."""
        put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), 0, axis=self.seq_axis)
        return self.replace(k=put(self.k, small.k), v=put(self.v, small.v), lengths=small.lengths)
