"""Turn-budget (interaction-frequency) annealing, WMAct's second mechanism.

The maximum number of turns an episode may use, ``L_max``, starts high (30 in the paper) and every
``tau`` training iterations moves halfway toward the mean number of turns actually used since the
last update: ``L_max <- (L_mean + L_max) / 2``. The cap thus shrinks toward real usage and pushes the
policy to rely on its internal world model rather than on environment feedback.

Everything here is a pure, jittable function of an :class:`AnnealState` pytree: the state can live
on device inside a jitted training iteration and be checkpointed with the rest of the train state.
Baselines: ``'fixed'`` (constant cap) and ``'linear'`` (a schedule that ignores usage).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct


@dataclasses.dataclass(frozen=True)
class AnnealConfig:
    """Static configuration of the turn cap.

    Attributes:
      kind: ``'wmact'`` (usage-driven halving), ``'fixed'`` (constant ``l0``) or ``'linear'``
        (``l0`` -> ``final`` over ``num_iterations``, then constant).
      l0: initial cap (the paper: 30).
      tau: iterations between WMAct updates (the paper's best: 100).
      floor: the cap never goes below this (a turn is needed to answer at all).
      rounding: how the real-valued ``L_max`` becomes an integer cap: ``'ceil'`` (default: never
        cut below the running value), ``'round'`` or ``'floor'``.
      final, num_iterations: the linear schedule's end value and length.
    """

    kind: Literal["wmact", "fixed", "linear"] = "wmact"
    l0: float = 30.0
    tau: int = 100
    floor: float = 1.0
    rounding: Literal["ceil", "round", "floor"] = "ceil"
    final: float = 1.0
    num_iterations: int = 1000

    def __post_init__(self):
        if self.kind not in ("wmact", "fixed", "linear"):
            raise ValueError(f"unknown annealing kind {self.kind!r}")
        if self.rounding not in ("ceil", "round", "floor"):
            raise ValueError(f"unknown rounding {self.rounding!r}")
        if self.tau < 1 or self.num_iterations < 1:
            raise ValueError("tau and num_iterations must be >= 1")


class AnnealState(struct.PyTreeNode):
    """Device-resident annealing state (all scalars).

    ``turn_sum``/``episode_count`` accumulate usage since the last WMAct update, so that ``L_mean``
    is the mean over *all* episodes of the window, not a mean of per-iteration means.
    """

    l_max: jax.Array  # float32, the real-valued cap
    turn_sum: jax.Array  # float32, turns used since last update
    episode_count: jax.Array  # float32, episodes since last update
    iterations_since_update: jax.Array  # int32
    iteration: jax.Array  # int32, total iterations seen


def anneal_init(cfg: AnnealConfig) -> AnnealState:
    return AnnealState(
        l_max=jnp.asarray(max(cfg.l0, cfg.floor), jnp.float32),
        turn_sum=jnp.zeros((), jnp.float32),
        episode_count=jnp.zeros((), jnp.float32),
        iterations_since_update=jnp.zeros((), jnp.int32),
        iteration=jnp.zeros((), jnp.int32),
    )


def anneal_update(
    cfg: AnnealConfig,
    state: AnnealState,
    turns_used: jax.Array,  # [E] turns each episode of this iteration used
    valid: jax.Array | None = None,  # [E] bool, episodes to count (e.g. not padding)
    adaptive: bool | jax.Array = True,
) -> AnnealState:
    """Record one training iteration's usage and advance the cap. Jittable, no host branching.

    Call once per training iteration, after the rollouts that ran under ``current_cap(cfg, state)``.
    ``adaptive`` (``kind='wmact'`` only; may be traced): False keeps ``L_max`` where it is and the
    window accumulating, as ``'fixed'`` does from ``anneal_init``. The trainer passes it as an
    argument so that the fixed-cap and the annealed methods share one compiled iteration.
    """
    turns = jnp.asarray(turns_used, jnp.float32)
    w = jnp.ones_like(turns) if valid is None else jnp.asarray(valid, jnp.float32)
    turn_sum = state.turn_sum + jnp.sum(turns * w)
    count = state.episode_count + jnp.sum(w)
    since = state.iterations_since_update + 1
    iteration = state.iteration + 1

    if cfg.kind == "fixed":
        l_max = jnp.asarray(max(cfg.l0, cfg.floor), jnp.float32)
        return AnnealState(l_max, turn_sum, count, since, iteration)

    if cfg.kind == "linear":
        frac = jnp.minimum(iteration.astype(jnp.float32) / cfg.num_iterations, 1.0)
        l_max = jnp.maximum(cfg.l0 + (cfg.final - cfg.l0) * frac, cfg.floor).astype(jnp.float32)
        return AnnealState(l_max, turn_sum, count, since, iteration)

    # 'wmact': every tau iterations, L_max <- (L_mean + L_max) / 2 and the window restarts.
    do_update = (since >= cfg.tau) & jnp.asarray(adaptive, bool)
    # With no counted episode in the window there is no evidence: keep L_max.
    l_mean = jnp.where(count > 0, turn_sum / jnp.maximum(count, 1.0), state.l_max)
    new_l = jnp.maximum((l_mean + state.l_max) / 2.0, cfg.floor)
    return AnnealState(
        l_max=jnp.where(do_update, new_l, state.l_max).astype(jnp.float32),
        turn_sum=jnp.where(do_update, 0.0, turn_sum),
        episode_count=jnp.where(do_update, 0.0, count),
        iterations_since_update=jnp.where(do_update, 0, since).astype(jnp.int32),
        iteration=iteration,
    )


def current_cap(cfg: AnnealConfig, state: AnnealState) -> jax.Array:
    """Integer turn cap (int32 scalar) for the next rollouts, ``>= ceil(floor)``."""
    rnd = {"ceil": jnp.ceil, "round": jnp.round, "floor": jnp.floor}[cfg.rounding]
    # Subtract a hair before ceil so float noise like 17.500002 or 5.0000005 does not add a turn.
    l = state.l_max - 1e-4 if cfg.rounding == "ceil" else state.l_max
    cap = jnp.maximum(rnd(l), jnp.ceil(jnp.asarray(cfg.floor, jnp.float32) - 1e-4))
    return cap.astype(jnp.int32)
