"""`envs_jax.make(name, **overrides) -> (env, params)` and the named presets.

Overrides are split by where they live: constructor arguments are static (sizes, box counts,
maps: they fix array shapes, so changing them retraces), everything else replaces a field of the
environment's params dataclass (traced: vmappable, no recompilation). Unknown keys and impossible
values raise `EnvError` before anything is traced.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Tuple

from envs_jax.core import Environment, EnvError, replace_params


def _sokoban():
    from envs_jax.sokoban import Sokoban
    return Sokoban


def _maze():
    from envs_jax.maze import Maze
    return Maze


def _taxi():
    from envs_jax.taxi import Taxi
    return Taxi


# name -> (class loader, static constructor kwargs, params overrides); loaders import lazily.
PRESETS: Dict[str, Tuple[Callable[[], type], Dict[str, Any], Dict[str, Any]]] = {
    "Sokoban-6x6-1": (_sokoban, dict(dim_room=(6, 6), num_boxes=1), {}),
    "Sokoban-Standard": (_sokoban, dict(dim_room=(7, 7), num_boxes=2), {}),
    "Sokoban-Hard-1": (_sokoban, dict(dim_room=(10, 10), num_boxes=2), {}),
    "Sokoban-Hard-2": (_sokoban, dict(dim_room=(7, 7), num_boxes=3), {}),
    "Maze-5x5": (_maze, dict(size=5), {}),
    "Maze-7x7": (_maze, dict(size=7), {}),
    "Maze-9x9": (_maze, dict(size=9), {}),
    "Maze-11x11": (_maze, dict(size=11), {}),
    "Maze-21x21": (_maze, dict(size=21), {}),
    "Taxi-v3": (_taxi, dict(), {}),
    # Generated larger maps (envs_jax/taxi/maps.py) for transfer studies.
    "Taxi-7x7": (_taxi, dict(map="7x7"), {}),
    "Taxi-10x10": (_taxi, dict(map="10x10"), {}),
}


def register(name: str, factory: Callable[[], type], static: Dict[str, Any] | None = None,
             params: Dict[str, Any] | None = None) -> None:
    """Adds a preset (e.g. a larger map for a transfer study); `factory()` returns the class."""
    if name in PRESETS:
        raise EnvError(f"environment {name!r} is already registered")
    PRESETS[name] = (factory, dict(static or {}), dict(params or {}))


def list_envs() -> list[str]:
    return sorted(PRESETS)


def make(name: str, **overrides: Any) -> Tuple[Environment, Any]:
    """Builds a named environment: `env, params = envs_jax.make("Sokoban-Standard", max_steps=50)`."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise EnvError(f"unknown environment {name!r}.{hint} Known: {list_envs()}")
    factory, static, param_overrides = PRESETS[name]
    klass = factory()
    static_names = {p for p in inspect.signature(klass.__init__).parameters if p != "self"}
    static = dict(static)
    params_kw = dict(param_overrides)
    for k, v in overrides.items():
        (static if k in static_names else params_kw)[k] = v
    try:
        env = klass(**static)
    except TypeError as e:  # a static option of the wrong kind
        raise EnvError(f"{name}: bad constructor arguments {static}: {e}") from e
    params = env.default_params
    fields = set(getattr(params, "__dataclass_fields__", {}))
    unknown = sorted(set(params_kw) - fields)
    if unknown:
        raise EnvError(
            f"{name}: unknown override(s) {unknown}; static (shape) options are "
            f"{sorted(static_names)}, parameters are {sorted(fields)}")
    params = replace_params(params, params_kw, name)
    if hasattr(env, "validate_params"):
        env.validate_params(params)
    return env, params
