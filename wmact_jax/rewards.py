"""WMAct episode rewards as array transforms over a batch of episodes.

All functions take per-episode arrays of shape ``[E]`` (one entry per episode) and are
jittable: configuration is static (a frozen dataclass), data is traced.

The pieces, composed by :func:`episode_rewards`:

* outcome reward: binary success (0/1) or the environment's summed return;
* WMAct reward rescaling: ``R * N_eff / N`` rewards purposeful, non-redundant interaction
  (an action is *effective* when it changed the environment state);
* a penalty per malformed answer (the policy wrote text the codec could not parse);
* a flat per-step penalty (per action or per turn), used by the paper's ablation that replaces
  turn-budget annealing with a ``-0.1`` step penalty;
* a penalty per revisiting turn (a turn that left the environment in a state the episode had already
  been in: a cycle closed, or a move that changed nothing), not in the paper: greedy failures of the
  trained policies here are nearly all such cycles (docs/EXPERIMENTS.md, Taxi).

:func:`rewards_to_tokens` then places per-turn and episode rewards on the ``[E, S]`` token grid
that PPO consumes.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

OutcomeKind = Literal["success", "env_return"]
StepUnit = Literal["action", "turn"]


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How an episode's scalar reward is built.

    Attributes:
      outcome: ``'success'`` (1.0 if solved else 0.0) or ``'env_return'`` (the env's own return).
      rescale: multiply the outcome by action efficacy ``N_eff / N`` (WMAct reward rescaling).
      format_penalty: magnitude subtracted per malformed answer (>= 0; 0 disables).
      step_penalty: magnitude subtracted per step (>= 0; 0 disables). The paper's ablation uses 0.1.
      step_penalty_unit: ``'action'`` (per executed action) or ``'turn'`` (per model turn).
      revisit_penalty: magnitude subtracted per revisiting turn (>= 0; 0 disables).

    ``rescale``, ``format_penalty``, ``step_penalty`` and ``revisit_penalty`` may also be (traced) JAX
    scalars: the trainer passes them as arguments of its jitted iteration, so that methods differing only
    in them (interactive, rescale, wmact, step_penalty) run one compiled program.
    """

    outcome: OutcomeKind = "success"
    rescale: bool = True
    format_penalty: float = 0.0
    step_penalty: float = 0.0
    step_penalty_unit: StepUnit = "action"
    revisit_penalty: float = 0.0

    def __post_init__(self):
        if self.outcome not in ("success", "env_return"):
            raise ValueError(f"outcome must be 'success' or 'env_return', got {self.outcome!r}")
        if self.step_penalty_unit not in ("action", "turn"):
            raise ValueError(f"step_penalty_unit must be 'action' or 'turn', got {self.step_penalty_unit!r}")


def outcome_reward(kind: OutcomeKind, success: jax.Array, env_return: jax.Array) -> jax.Array:
    """Outcome reward per episode, float32 ``[E]``.

    ``'success'`` is the paper's sparse 0/1 signal; ``'env_return'`` uses the environment's shaped
    return (e.g. Sokoban's -0.1/step, +1/box, +10 solved).
    """
    if kind == "success":
        return jnp.asarray(success).astype(jnp.float32)
    if kind == "env_return":
        return jnp.asarray(env_return, jnp.float32)
    raise ValueError(f"unknown outcome kind {kind!r}")


def efficacy(n_eff: jax.Array, n: jax.Array) -> jax.Array:
    """Action efficacy ``N_eff / N`` per episode, float32 ``[E]``.

    An episode that executed no action (``N == 0``, e.g. every answer was malformed) gets efficacy 0:
    there is no purposeful interaction to reward, and it avoids a 0/0.
    """
    n = jnp.asarray(n, jnp.float32)
    n_eff = jnp.asarray(n_eff, jnp.float32)
    safe_n = jnp.where(n > 0, n, 1.0)
    return jnp.where(n > 0, n_eff / safe_n, 0.0)


def rescale_by_efficacy(reward: jax.Array, n_eff: jax.Array, n: jax.Array) -> jax.Array:
    """WMAct rescaling ``R * N_eff / N`` per episode ``[E]`` (factor 0 when ``N == 0``).

    Note: applied to a negative reward (``outcome='env_return'``) the factor shrinks the penalty
    of inefficient episodes too; the paper applies it to the (non-negative) success outcome.
    """
    return jnp.asarray(reward, jnp.float32) * efficacy(n_eff, n)


def format_penalty(penalty: float | jax.Array, format_errors: jax.Array) -> jax.Array:
    """``-penalty * format_errors``, elementwise (per episode ``[E]``, or per turn ``[E, L]``): discourages
    unparsable answers."""
    return -jnp.asarray(penalty, jnp.float32) * jnp.asarray(format_errors, jnp.float32)


def step_penalty(penalty: float | jax.Array, unit: StepUnit, n_actions: jax.Array, turns: jax.Array) -> jax.Array:
    """Flat ``-penalty * steps``, steps counted per action or per turn; elementwise, so it serves per
    episode (``[E]`` counts) and per turn (``[E, L]``: a turn's actions, or 1 for a turn taken).

    The ablation baseline for annealing: pressure toward short interaction via the reward
    instead of via the turn cap.
    """
    if unit == "action":
        steps = n_actions
    elif unit == "turn":
        steps = turns
    else:
        raise ValueError(f"unknown step penalty unit {unit!r}")
    return -jnp.asarray(penalty, jnp.float32) * jnp.asarray(steps, jnp.float32)


def revisit_penalty(penalty: float | jax.Array, revisits: jax.Array) -> jax.Array:
    """``-penalty * revisits``, elementwise (per episode ``[E]`` counts, or per turn ``[E, L]`` flags): a
    turn that brings the environment back to a state of the episode's past made no progress."""
    return -jnp.asarray(penalty, jnp.float32) * jnp.asarray(revisits, jnp.float32)


def episode_rewards(
    cfg: RewardConfig,
    *,
    success: jax.Array,  # [E] bool
    env_return: jax.Array,  # [E] float
    n_actions: jax.Array,  # [E] int, N
    n_effective: jax.Array,  # [E] int, N_eff
    format_errors: jax.Array,  # [E] int
    turns: jax.Array,  # [E] int
    revisits: jax.Array | None = None,  # [E] int: revisiting turns (None: none counted)
) -> dict[str, jax.Array]:
    """Compose the episode reward from its parts; every value is float32 ``[E]``.

    Returns a dict with ``outcome`` (raw), ``efficacy`` (N_eff/N), ``scaled`` (outcome after
    optional rescaling), ``format``, ``step`` and ``revisit`` (penalties, <= 0) and ``total`` (their sum),
    so that each component can be logged separately.
    """
    out = outcome_reward(cfg.outcome, success, env_return)
    eff = efficacy(n_effective, n_actions)
    scaled = jnp.where(jnp.asarray(cfg.rescale, bool), out * eff, out)
    fmt = format_penalty(cfg.format_penalty, format_errors)
    stp = step_penalty(cfg.step_penalty, cfg.step_penalty_unit, n_actions, turns)
    rev = revisit_penalty(cfg.revisit_penalty, jnp.zeros_like(turns) if revisits is None else revisits)
    return {
        "outcome": out,
        "efficacy": eff,
        "scaled": scaled,
        "format": fmt,
        "step": stp,
        "revisit": rev,
        "total": scaled + fmt + stp + rev,
    }


def _last_model_index(model: jax.Array) -> jax.Array:
    """Index of the last True along axis 1 of ``model [E, S]``, -1 when there is none. ``[E]``."""
    s = model.shape[1]
    pos = jnp.arange(s, dtype=jnp.int32)[None, :]
    return jnp.max(jnp.where(model, pos, -1), axis=1)


def rewards_to_tokens(
    turn_id: jax.Array,  # [E, S] int, turn index of each token, -1 for non-model tokens
    loss_mask: jax.Array,  # [E, S] bool/0-1, True for model-written tokens
    turn_rewards: jax.Array | None,  # [E, L] float per-turn rewards, or None
    episode_reward: jax.Array,  # [E] float
    placement: Literal["turn", "episode"] = "turn",
) -> jax.Array:
    """Place rewards on the token grid, float32 ``[E, S]``.

    Why: PPO/GAE needs a reward per token; a reward is credited to the token that "completed" the
    decision it judges.

    * ``'turn'``: turn ``l``'s reward goes to the last model token of turn ``l`` (the token after
      which the environment acted), and ``episode_reward`` to the last model token of the episode.
    * ``'episode'``: everything (sum of turn rewards + episode reward) at the episode's last model
      token: pure outcome supervision.

    A model token is one with ``loss_mask`` true and ``turn_id >= 0``. Turn rewards of turns that
    have no model token (or ids ``>= L``) are not lost: they are added at the episode's last model
    token. An episode with no model token at all receives nothing (no token can carry it).
    Turn ids need not be contiguous or monotone.
    """
    turn_id = jnp.asarray(turn_id, jnp.int32)
    model = jnp.asarray(loss_mask).astype(bool) & (turn_id >= 0)
    e, s = model.shape
    episode_reward = jnp.asarray(episode_reward, jnp.float32)
    last = _last_model_index(model)  # [E]
    has_any = last >= 0
    rows = jnp.arange(e)

    if turn_rewards is None:
        turn_rewards = jnp.zeros((e, 1), jnp.float32)
    turn_rewards = jnp.asarray(turn_rewards, jnp.float32)
    n_turns = turn_rewards.shape[1]

    out = jnp.zeros((e, s), jnp.float32)
    if placement == "episode":
        total = episode_reward + turn_rewards.sum(axis=1)
        return out.at[rows, jnp.maximum(last, 0)].add(jnp.where(has_any, total, 0.0))
    if placement != "turn":
        raise ValueError(f"placement must be 'turn' or 'episode', got {placement!r}")

    # Last model position of each turn via scatter-max: [E, L], -1 where the turn has no model token.
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :], (e, s))
    tid = jnp.where(model & (turn_id < n_turns), turn_id, n_turns)  # out-of-range -> dropped
    turn_last = jnp.full((e, n_turns), -1, jnp.int32)
    turn_last = turn_last.at[rows[:, None], tid].max(jnp.where(model, pos, -1), mode="drop")
    placed = turn_last >= 0  # [E, L]
    out = out.at[rows[:, None], jnp.maximum(turn_last, 0)].add(jnp.where(placed, turn_rewards, 0.0))
    orphan = jnp.sum(jnp.where(placed, 0.0, turn_rewards), axis=1)  # [E]
    end = episode_reward + orphan
    return out.at[rows, jnp.maximum(last, 0)].add(jnp.where(has_any, end, 0.0))
