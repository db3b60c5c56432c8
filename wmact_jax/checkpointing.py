"""Checkpoints of the whole train state (params, optimizer state, RNG key, annealing state,
iteration) plus the run config, with Orbax.

Why Orbax: it writes each step into ``<step>.orbax-checkpoint-tmp-<ts>/`` and renames it to
``<step>/`` only once complete (atomic finalize), so a run killed at any moment leaves the previous
checkpoint as the latest valid one; it saves sharded arrays from every host of a pod; and the format
is what JAX users export and load elsewhere.

Why the config is saved too: resuming with a config that changes array shapes (model sizes, the
environment, the context length, ...) would fail deep inside Orbax with an opaque shape error, or
worse, silently mix runs. ``restore`` compares the fields in `SHAPE_FIELDS` first and names them.

    ckpt = Checkpointer(f"{workdir}/checkpoints", config)
    abstract = jax.eval_shape(trainer.init_state, key)
    state = ckpt.restore(abstract) if ckpt.latest_step() is not None else trainer.init_state(key)
    ckpt.save(step, state)          # all processes call it; saves every `save_interval_steps`
    ckpt.close()
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from wmact_jax import config_check

# Fields whose change alters the train state's shapes or structure: resuming across them is refused.
SHAPE_FIELDS = (
    "env.name",
    "model.source",
    "model.path",
    "model.hidden_size",
    "model.intermediate_size",
    "model.num_layers",
    "model.num_heads",
    "model.num_kv_heads",
    "model.critic",
    "rollout.context_len",
    "rollout.max_turn_tokens",
    "ppo.schedule",  # the optimizer state's structure depends on it
)

_STATE, _CONFIG = "state", "config"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (incompatible config or train state)."""


def config_to_dict(config: ml_collections.ConfigDict | dict) -> dict:
    """JSON-safe plain dict (tuples become lists, as they will after a JSON round trip)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json())
    return json.loads(json.dumps(config))


def config_differences(saved: dict | ml_collections.ConfigDict,
                        current: dict | ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(shape-changing differences, other differences) as 'field: saved -> current' strings."""
    diff = config_check.differences(config_to_dict(saved), config_to_dict(current))
    by_path = {path: f"{path}: {a!r} -> {b!r}" for path, a, b in diff}
    shape = [by_path[p] for p in SHAPE_FIELDS if p in by_path]
    other = [line for path, line in by_path.items() if path not in SHAPE_FIELDS]
    return shape, other


def _with_default_sharding(abstract: Any) -> Any:
    """Leaves without a sharding get a replicated one over all devices (every host sees them)."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("_all",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def fix(x):
        if isinstance(x, jax.ShapeDtypeStruct) and getattr(x, "sharding", None) is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
        return x

    return jax.tree.map(fix, abstract)


class Checkpointer:
    """Orbax `CheckpointManager` holding items 'state' (the train-state pytree) and 'config' (JSON).

    Args:
      directory: where the step folders live (created if missing).
      config: the current run config (saved with every step, compared on restore).
      max_to_keep: older finalized steps are deleted.
      save_interval_steps: `save(step, ...)` writes only when step is a multiple (or force=True).
      async_save: write in a background thread (the device->host copy happens before `save`
        returns, so the caller may update or donate the state right away).
    """

    def __init__(self, directory: str, config: ml_collections.ConfigDict | dict, *,
                 max_to_keep: int = 3, save_interval_steps: int = 1, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.config = config_to_dict(config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            cleanup_tmp_directories=True,  # drop half-written steps of a killed run
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=(_STATE, _CONFIG))

    def latest_step(self) -> int | None:
        """The newest *finalized* step (half-written tmp folders are never returned)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves if `step` is due (or `force`); call on every process. Returns whether it saved."""
        if force and step in self.manager.all_steps():
            return False  # already there (e.g. a final save right after a periodic one)
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _CONFIG: ocp.args.JsonSave(self.config),
            }),
            force=force,
        )

    def saved_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            **{_CONFIG: ocp.args.JsonRestore()}))
        return out[_CONFIG]

    def check_compatible(self, step: int | None = None) -> list[str]:
        """Raises `CheckpointError` if the saved config changes shapes; returns other changes."""
        step = self.latest_step() if step is None else step
        saved = self.saved_config(step)
        shape, other = config_differences(saved, self.config)
        if shape:
            raise CheckpointError(
                f"cannot resume from {self.directory}/{step}: the config changed in field(s) that "
                "alter the train state's shapes:\n  " + "\n  ".join(shape) +
                "\nRestore the saved values, or start a fresh run with another --workdir.")
        return other

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restores `step` (default: latest) into the structure of `abstract_state`.

        `abstract_state` is ``jax.eval_shape(trainer.init_state, key)``: shapes, dtypes and (if the
        leaves carry them) shardings of the target; leaves without a sharding are replicated.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint to restore in {self.directory}")
        other = self.check_compatible(step)
        if other:
            logging.warning("resuming step %d with config changes: %s", step, "; ".join(other))
        target = _with_default_sharding(abstract_state)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(target)}))
        except Exception as e:  # Orbax raises assorted types for structure/shape mismatches.
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match the current train state "
                f"(its structure or shapes differ: {type(e).__name__}: {e})") from e
        return out[_STATE]

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
