"""Device mesh and logical-axis sharding rules for the policy.

Mesh axes: 'data' (pure data parallel), 'fsdp' (data parallel + parameters sharded on 'embed'),
'tp' (tensor parallel over heads / mlp / vocab). The batch is split over ('data', 'fsdp').
Params carry logical names (llama.py); `rules` map them to mesh axes. A dimension not divisible by
its mesh axes is replicated instead (e.g. 9 heads on tp=2), so any config runs on any mesh.
Axes are `Auto`, so jit/GSPMD propagates activation shardings from the inputs.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from wmact_jax.models.kv_cache import KVCache

MESH_AXES = ("data", "fsdp", "tp")
BATCH_AXES = ("data", "fsdp")

# logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated)
DEFAULT_RULES: dict[str, object] = {
    "batch": BATCH_AXES,
    "vocab": "tp",
    "embed": "fsdp",
    "mlp": "tp",
    "q_heads": "tp",
    "kv_heads": "tp",
    "head_dim": None,
    "layers": None,
    "norm": None,
    "length": None,
}


def make_mesh(data: int = -1, fsdp: int = 1, tp: int = 1, devices: Sequence | None = None) -> jax.sharding.Mesh:
    """Mesh over ('data', 'fsdp', 'tp'); data=-1 takes all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if n % (fsdp * tp):
            raise ValueError(f"{n} devices are not divisible by fsdp*tp = {fsdp}*{tp}")
        data = n // (fsdp * tp)
    if data * fsdp * tp != n:
        raise ValueError(f"mesh data*fsdp*tp = {data}*{fsdp}*{tp} != {n} devices")
    return jax.make_mesh((data, fsdp, tp), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_axes(rule) -> tuple[str, ...]:
    if rule is None:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh,
                    rules: Mapping[str, object] | None = None) -> P:
    """Logical names (one per dim) -> PartitionSpec, replicating dims that do not divide evenly
    and never using a mesh axis twice."""
    rules = DEFAULT_RULES if rules is None else rules
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axes = tuple(a for a in _mesh_axes(rules.get(name) if name is not None else None)
                     if a not in used and mesh.shape[a] > 1)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return P(*spec)


def _is_var(x):
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: jax.sharding.Mesh, rules: Mapping[str, object] | None = None):
    """Params state -> same-structured state of NamedSharding (for jit in/out_shardings)."""
    def one(var):
        names = var.get_metadata().get("out_sharding") or (None,) * var.value.ndim
        return var.replace(NamedSharding(mesh, logical_to_spec(names, var.value.shape, mesh, rules)))

    return jax.tree.map(one, state, is_leaf=_is_var)


def shard_state(state, mesh: jax.sharding.Mesh, rules: Mapping[str, object] | None = None):
    """Place every param on `mesh` following its logical axis names."""
    shardings = state_shardings(state, mesh, rules)
    return jax.tree.map(lambda v, s: v.replace(jax.device_put(v.value, s.value)), state, shardings, is_leaf=_is_var)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(x, mesh: jax.sharding.Mesh):
    """device_put every array of a pytree with its leading axis split over ('data', 'fsdp')."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(a):
        a = np.asarray(a) if not isinstance(a, jax.Array) else a
        if a.shape[0] % n:
            raise ValueError(f"batch size {a.shape[0]} is not divisible by data*fsdp = {n}")
        return jax.device_put(a, batch_sharding(mesh, a.ndim))

    return jax.tree.map(put, x)


def cache_shardings(cache: KVCache, mesh: jax.sharding.Mesh, rules: Mapping[str, object] | None = None) -> KVCache:
    """KVCache of NamedSharding: batch over ('data','fsdp'), kv heads over 'tp' when divisible."""
    k_axes, v_axes = cache.logical_axes

    def spec(axes, shape):  # either layout; stacked, or per layer (the spec without the layers axis)
        s = logical_to_spec(axes, shape, mesh, rules)
        if cache.per_layer:
            return tuple(NamedSharding(mesh, P(*tuple(s)[1:])) for _ in range(cache.num_layers))
        return NamedSharding(mesh, s)

    return KVCache(k=spec(k_axes, cache.k_shape), v=spec(v_axes, cache.v_shape),
                   lengths=NamedSharding(mesh, logical_to_spec(("batch",), cache.lengths.shape, mesh, rules)),
                   layout=cache.layout)


def shard_cache(cache: KVCache, mesh: jax.sharding.Mesh, rules: Mapping[str, object] | None = None) -> KVCache:
    return jax.device_put(cache, cache_shardings(cache, mesh, rules))
