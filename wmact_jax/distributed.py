"""Multi-host start-up: `jax.distributed.initialize` when the config asks for it.

Why a wrapper: the coordinator address, process count and id come from the config when given,
else from the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``,
as a launcher script or SLURM wrapper sets them), else JAX auto-detects them (TPU pods, SLURM,
Kubernetes) from a bare ``initialize()``. On CPU the cross-process collectives need gloo, which
must be selected before the backend starts, so it is set here first.
"""
from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def use_gloo_for_cpu() -> bool:
    """Selects gloo for CPU cross-process collectives (harmless on GPU/TPU). False if unsupported."""
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        return True
    except Exception as e:  # an older/newer jax without the option
        logging.warning("could not select gloo CPU collectives: %s", e)
        return False


def initialize_args(config: Any, environ: dict | None = None) -> dict:
    """Keyword arguments for `jax.distributed.initialize` (config first, then the environment)."""
    env = os.environ if environ is None else environ
    d = config.distributed
    coordinator = d.coordinator or env.get(ENV_COORDINATOR, "")
    num = int(d.num_processes) or int(env.get(ENV_NUM_PROCESSES, 0) or 0)
    pid = int(d.process_id) if int(d.process_id) >= 0 else int(env.get(ENV_PROCESS_ID, -1) or -1)
    kwargs: dict = {}
    if coordinator:
        kwargs["coordinator_address"] = coordinator
    if num > 0:
        kwargs["num_processes"] = num
    if pid >= 0:
        kwargs["process_id"] = pid
    return kwargs


def maybe_initialize(config: Any) -> bool:
    """Initializes multi-process JAX if ``config.distributed.enabled``; returns whether it is on.

    Must run before anything touches a JAX backend (devices, arrays, jit).
    """
    if not config.distributed.enabled:
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = initialize_args(config)
    use_gloo_for_cpu()
    logging.info("jax.distributed.initialize(%s)", kwargs or "auto-detect")
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main_process() -> bool:
    """Only process 0 writes logs, transcripts and summaries."""
    return jax.process_index() == 0
