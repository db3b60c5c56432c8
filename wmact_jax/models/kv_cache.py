"""Key/value cache for incremental decoding.

Two storages of k / v. Per layer (a tuple of [batch, ...] buffers, one per layer): what `init` gives
models of at most `PER_LAYER_UP_TO` (32) layers, whose cached forward then unrolls its layer loop; each
layer writes its new columns into its own buffer and attends to it in place. On XLA:CPU this avoids
copying every layer's slice of a stacked buffer (and of the stacked weights) at every decode step:
`benchmarks/profile_decode.py` shows those copies in SmolLM2's stacked decode step.
Stacked (one [layers, ...] array each, layer axis first): read by the layer scan of deeper models.
Either way the cache shards on the batch axis.

Two memory layouts (a static field, so it is part of the pytree structure and never traced):
- "bkds", what `KVCache.init` allocates: keys transposed, [layers, batch, kv_heads, head_dim, max_len],
  values [layers, batch, kv_heads, max_len, head_dim]. Both attention products then read each (row, kv
  head) in place with positions as the contiguous axis of the reduction's output or input: q.K^T reduces
  over head_dim with positions contiguous, p.V over positions with head_dim contiguous. On XLA:CPU the
  q.K^T of a batch-64 decode step ran 4.7x (small model) / 5.0x (SmolLM2 shapes) faster than with keys
  as [max_len, head_dim] ("bksd", the layout before this one); `benchmarks/kv_cache_storage.py` measures
  that product alone and the layouts in the model.
- "bskd": k and v [layers, batch, max_len, kv_heads, head_dim], the default when constructing
  `KVCache(k, v, lengths)` directly (the original layout; kept for caches built by hand, e.g. in tests).
The model and the sampler accept both; use `max_len` / `batch` / `prefix` rather than indexing `k`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from wmact_jax.models.config import ModelConfig

LAYOUTS = ("bkds", "bskd")
# Default storage: per layer up to this depth. SmolLM2's 30 layers included: with the "bkds" layout its
# batch-64 decode step was 1.27x faster per layer than stacked (the stacked scan copies every layer's
# cache slice and weights at each step), for a longer first compile of the unrolled decode loop.
PER_LAYER_UP_TO = 32


@struct.dataclass
class KVCache:
    k: jax.Array  # "bkds": [layers, batch, kv_heads, head_dim, max_len]; "bskd": [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array  # "bkds": [layers, batch, kv_heads, max_len, head_dim]; "bskd": as k
    lengths: jax.Array  # [batch] int32: number of valid positions already written per row
    layout: str = struct.field(pytree_node=False, default="bskd")

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=None, layout: str = "bkds",
             per_layer: bool | None = None) -> "KVCache":
        """Empty cache (zeros, lengths 0). dtype defaults to the model's compute dtype.

        per_layer: k / v as tuples of [batch, ...] buffers, one per layer (the model then runs its layers
        as an unrolled Python loop, each reading and writing its own buffer in place), else stacked
        [layers, ...] arrays (read by a layer scan). Default: per layer for models of at most
        `PER_LAYER_UP_TO` (32) layers; deeper models keep the scan, whose compile time does not grow
        with depth.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        dtype = jnp.dtype(dtype or config.dtype)
        L, KV, Dh = config.num_layers, config.num_kv_heads, config.head_dim
        if layout == "bkds":
            k_shape, v_shape = (L, batch, KV, Dh, max_len), (L, batch, KV, max_len, Dh)
        else:
            k_shape = v_shape = (L, batch, max_len, KV, Dh)
        if per_layer is None:
            per_layer = L <= PER_LAYER_UP_TO
        if per_layer:
            k = tuple(jnp.zeros(k_shape[1:], dtype) for _ in range(L))
            v = tuple(jnp.zeros(v_shape[1:], dtype) for _ in range(L))
        else:
            k, v = jnp.zeros(k_shape, dtype), jnp.zeros(v_shape, dtype)
        return cls(k=k, v=v, lengths=jnp.zeros((batch,), jnp.int32), layout=layout)

    @property
    def k_seq_axis(self) -> int:
        """Axis of the stacked k that indexes positions (4 for "bkds", 2 for "bskd"); one less per layer."""
        return 4 if self.layout == "bkds" else 2

    @property
    def v_seq_axis(self) -> int:
        """Axis of the stacked v that indexes positions (3 for "bkds", 2 for "bskd"); one less per layer."""
        return 3 if self.layout == "bkds" else 2

    @property
    def per_layer(self) -> bool:
        """True when k / v are tuples of per-layer buffers (what `init` allocates)."""
        return isinstance(self.k, (tuple, list))

    @property
    def num_layers(self) -> int:
        return len(self.k) if self.per_layer else self.k.shape[0]

    @property
    def k_shape(self) -> tuple[int, ...]:
        """Shape of the stacked k ([layers, ...] in `layout`), whichever way it is stored."""
        return (len(self.k), *self.k[0].shape) if self.per_layer else tuple(self.k.shape)

    @property
    def v_shape(self) -> tuple[int, ...]:
        """Shape of the stacked v ([layers, ...] in `layout`), whichever way it is stored."""
        return (len(self.v), *self.v[0].shape) if self.per_layer else tuple(self.v.shape)

    @property
    def dtype(self):
        return (self.k[0] if self.per_layer else self.k).dtype

    @property
    def max_len(self) -> int:
        return self.v_shape[self.v_seq_axis]

    @property
    def batch(self) -> int:
        return self.v_shape[1]

    def layer(self, l: int) -> tuple[jax.Array, jax.Array]:
        """Layer l's (k, v) buffers, [batch, ...] in `layout` (no copy when stored per layer)."""
        return self.k[l], self.v[l]

    def stacked(self) -> "KVCache":
        """The same cache with k / v as single [layers, ...] arrays (a copy when stored per layer)."""
        if not self.per_layer:
            return self
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))

    @property
    def logical_axes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Logical axis names of the stacked (k, v) (for sharding rules)."""
        if self.layout == "bkds":
            return (("layers", "batch", "kv_heads", "head_dim", "length"),
                    ("layers", "batch", "kv_heads", "length", "head_dim"))
        axes = ("layers", "batch", "length", "kv_heads", "head_dim")
        return axes, axes

    @property
    def seq_axes(self) -> tuple[int, int]:
        """Position axes of (k, v) as stored: of the stacked arrays, or of each per-layer buffer (one less)."""
        d = 1 if self.per_layer else 0
        return self.k_seq_axis - d, self.v_seq_axis - d

    def prefix(self, w: int) -> "KVCache":
        """The cache restricted to positions [0, w) (a copy of that window; lengths unchanged)."""
        ka, va = self.seq_axes
        sl = lambda ax: lambda x: jax.lax.slice_in_dim(x, 0, w, axis=ax)
        return self.replace(k=jax.tree.map(sl(ka), self.k), v=jax.tree.map(sl(va), self.v))

    def with_prefix(self, small: "KVCache") -> "KVCache":
        """Write a `prefix(w)` cache back over positions [0, w); lengths are taken from `small`."""
        ka, va = self.seq_axes
        put = lambda ax: lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), 0, axis=ax)
        return self.replace(k=jax.tree.map(put(ka), self.k, small.k), v=jax.tree.map(put(va), self.v, small.v),
                            lengths=small.lengths)
