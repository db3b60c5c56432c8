"""Key/value cache for incremental decoding.

Two storages of k / v. Per layer (a tuple of [batch, ...] buffers, one per layer): what `init` gives
models of at most 8 layers, whose layer loop is unrolled; each layer writes its new columns into its
own buffer and attends to it in place. On XLA:CPU this avoids copying every layer's slice of a stacked
buffer at every decode step (those copies were a large share of a batch-64 decode step in a profile).
Stacked (one [layers, ...] array each, layer axis first): read by the layer scan of deeper models.
Either way the cache shards on the batch axis.

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
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=None, layout: str = "bksd",
             per_layer: bool | None = None) -> "KVCache":
        """Empty cache (zeros, lengths 0). dtype defaults to the model's compute dtype.

        per_layer: k / v as tuples of [batch, ...] buffers, one per layer (the model then runs its layers
        as an unrolled Python loop, each reading and writing its own buffer in place), else stacked
        [layers, ...] arrays (read by a layer scan). Default: per layer for models of at most
        `UNROLL_LAYERS_UP_TO` layers, whose layer loop is unrolled anyway; deeper models keep the scan
        (an unrolled 30-layer decode loop compiles for much longer).
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        dtype = jnp.dtype(dtype or config.dtype)
        L, KV, Dh = config.num_layers, config.num_kv_heads, config.head_dim
        shape = (L, batch, KV, max_len, Dh) if layout == "bksd" else (L, batch, max_len, KV, Dh)
        if per_layer is None:
            from wmact_jax.models.llama import UNROLL_LAYERS_UP_TO
            per_layer = L <= UNROLL_LAYERS_UP_TO
        if per_layer:
            k = tuple(jnp.zeros(shape[1:], dtype) for _ in range(L))
            v = tuple(jnp.zeros(shape[1:], dtype) for _ in range(L))
        else:
            k, v = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
        return cls(k=k, v=v, lengths=jnp.zeros((batch,), jnp.int32), layout=layout)

    @property
    def seq_axis(self) -> int:
        """Axis of k / v that indexes positions (3 for "bksd", 2 for "bskd")."""
        return 3 if self.layout == "bksd" else 2

    @property
    def per_layer(self) -> bool:
        """True when k / v are tuples of per-layer buffers (what `init` allocates)."""
        return isinstance(self.k, (tuple, list))

    @property
    def num_layers(self) -> int:
        return len(self.k) if self.per_layer else self.k.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the stacked k / v ([layers, ...] in `layout`), whichever way they are stored."""
        if self.per_layer:
            return (len(self.k), *self.k[0].shape)
        return tuple(self.k.shape)

    @property
    def dtype(self):
        return (self.k[0] if self.per_layer else self.k).dtype

    @property
    def max_len(self) -> int:
        return self.shape[self.seq_axis]

    @property
    def batch(self) -> int:
        return self.shape[1]

    def layer(self, l: int) -> tuple[jax.Array, jax.Array]:
        """Layer l's (k, v) buffers, [batch, ...] in `layout` (no copy when stored per layer)."""
        return self.k[l], self.v[l]

    def stacked(self) -> "KVCache":
        """The same cache with k / v as single [layers, ...] arrays (a copy when stored per layer)."""
        if not self.per_layer:
            return self
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))

    @property
    def logical_axes(self) -> tuple[str, ...]:
        """Logical axis names of k / v (for sharding rules)."""
        if self.layout == "bksd":
            return ("layers", "batch", "kv_heads", "length", "head_dim")
        return ("layers", "batch", "length", "kv_heads", "head_dim")

    def prefix(self, w: int) -> "KVCache":
        """The cache restricted to positions [0, w) (a copy of that window; lengths unchanged)."""
        ax = self.seq_axis - 1 if self.per_layer else self.seq_axis
        sl = lambda x: jax.lax.slice_in_dim(x, 0, w, axis=ax)
        return self.replace(k=jax.tree.map(sl, self.k), v=jax.tree.map(sl, self.v))

    def with_prefix(self, small: "KVCache") -> "KVCache":
        """Write a `prefix(w)` cache back over positions [0, w); lengths are taken from `small`."""
        ax = self.seq_axis - 1 if self.per_layer else self.seq_axis
        put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), 0, axis=ax)
        return self.replace(k=jax.tree.map(put, self.k, small.k), v=jax.tree.map(put, self.v, small.v),
                            lengths=small.lengths)
