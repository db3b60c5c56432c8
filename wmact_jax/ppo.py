"""Token-level PPO for LLM agents over ``[E, S]`` arrays (E episodes, S token positions).

Alignment convention (used by every function here, and expected from the rollout):

* ``tokens[e, t]`` is the t-th token of episode e (prompt, model text and environment feedback
  interleaved, right-padded).
* ``mask[e, t]`` is true iff ``tokens[e, t]`` was written by the model (the only tokens trained on).
  ``mask[:, 0]`` must be false: the first token has no prediction.
* ``logprobs[e, t] = log p(tokens[e, t] | tokens[e, :t])``; it comes from the logits the model
  produced at position ``t - 1`` (a causal LM's logit at t predicts token t + 1).
* ``values[e, t] = V(tokens[e, :t])``: the critic's value of the state *in which token t is
  chosen*, i.e. the value head output at position ``t - 1``, same shift as the log-probs.
* ``rewards[e, t]`` is the reward received after emitting ``tokens[e, t]`` (see
  :func:`wmact_jax.rewards.rewards_to_tokens`).

:func:`token_logprobs_and_values` performs that shift from raw model outputs.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from wmact_jax.models.llama import LogitsHead

Array = jax.Array
# (params, tokens [M,S]) -> (logits [M,S,V] or a LogitsHead (read chunk by chunk), values [M,S])
ApplyFn = Callable[[Any, Array], tuple[Any, Array]]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Static PPO hyper-parameters.

    ``clip_low``/``clip_high`` give the asymmetric ratio range ``[1 - clip_low, 1 + clip_high]``
    (clip-higher keeps exploration alive). ``value_clip=None`` disables value clipping.
    ``kl_coef > 0`` requires ``ref_logprobs`` in the batch. ``temperature``: the policy trained is
    softmax(logits / temperature), the distribution the rollout drew its tokens from (its ``logprobs``
    must be that distribution's), so that the ratio compares like with like. ``loss_agg``: ``'token-mean'`` (every
    model token weighs the same across the minibatch) or ``'seq-mean-token-sum'`` (sum over an
    episode's tokens, mean over episodes: long answers weigh more, as in the original PPO-for-LLM
    recipes).
    """

    gamma: float = 1.0
    lam: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    value_clip: float | None = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    kl_coef: float = 0.0
    temperature: float = 1.0
    epochs: int = 1
    minibatches: int = 1
    max_grad_norm: float = 1.0
    advantage: Literal["gae", "grpo"] = "gae"
    normalise_advantages: bool = True
    loss_agg: Literal["token-mean", "seq-mean-token-sum"] = "token-mean"
    adv_eps: float = 1e-6
    # Static sequence widths the update may run at (increasing, the last = the batch width S; empty =
    # always S). The update trains on tokens[:, :W] for the smallest W holding every model token:
    # trailing padding is never attended to or trained on, so the result is the same, only cheaper.
    width_buckets: tuple = ()
    # > 0: a bound on the model tokens of one episode (the rollout's turns x answer tokens). When the
    # policy's logits come as a LogitsHead, the loss applies the LM head at that many positions per
    # episode instead of all S (`trained_token_stats`); a minibatch with more is counted in the metric
    # `max_trained_exceeded` (its log-probs would be wrong: `wmact_jax.main` refuses to go on).
    max_trained: int = 0

    def __post_init__(self):
        if self.advantage not in ("gae", "grpo"):
            raise ValueError(f"unknown advantage {self.advantage!r}")
        if self.loss_agg not in ("token-mean", "seq-mean-token-sum"):
            raise ValueError(f"unknown loss_agg {self.loss_agg!r}")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("epochs and minibatches must be >= 1")
        if self.max_trained < 0:
            raise ValueError(f"max_trained must be >= 0 (0: every position), got {self.max_trained}")


class TrainState(struct.PyTreeNode):
    """Parameters + optimizer state; the optimizer itself stays outside so the state is a pure pytree."""

    params: Any
    opt_state: Any
    step: Array  # int32 scalar, optimizer steps taken

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
        return cls(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


def is_critic_path(path) -> bool:
    """Whether a parameter (its pytree path) belongs to the critic: a value head, or a separate critic
    model stored under the top-level key ``'critic'``."""
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return (bool(keys) and keys[0] == "critic") or "value_head" in keys


def make_optimizer(
    learning_rate: float | optax.Schedule, max_grad_norm: float | None = 1.0, *,
    critic_learning_rate: float | optax.Schedule | None = None, **adam_kwargs
) -> optax.GradientTransformation:
    """``clip_by_global_norm -> adamw(learning_rate)``; the rates may be optax schedules.

    ``critic_learning_rate``: the critic's parameters (:func:`is_critic_path`) take their own Adam with
    this rate (the clipping stays global). Why: a zero-initialised value head moves by about the learning
    rate per step, so at a policy's rate (1e-4) it stays near 0 for hundreds of steps (measured on the
    default run: value loss unchanged after 80 steps).
    """
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    if critic_learning_rate is None:
        parts.append(optax.adamw(learning_rate, **adam_kwargs))
    else:
        labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
            lambda path, _: "critic" if is_critic_path(path) else "policy", params)
        parts.append(optax.multi_transform({"policy": optax.adamw(learning_rate, **adam_kwargs),
                                            "critic": optax.adamw(critic_learning_rate, **adam_kwargs)}, labels))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------
# Masked reductions


def masked_mean(x: Array, mask: Array, axis=None) -> Array:
    m = mask.astype(x.dtype)
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def masked_var(x: Array, mask: Array) -> Array:
    mu = masked_mean(x, mask)
    return masked_mean(jnp.square(x - mu), mask)


def aggregate(x: Array, mask: Array, mode: str = "token-mean") -> Array:
    """Reduce a per-token loss ``[M, S]`` over model tokens to a scalar."""
    m = mask.astype(x.dtype)
    if mode == "token-mean":
        return masked_mean(x, mask)
    if mode == "seq-mean-token-sum":
        per_seq = jnp.sum(x * m, axis=1)  # [M]
        has = jnp.sum(m, axis=1) > 0  # episodes without model tokens do not dilute the mean
        return jnp.sum(jnp.where(has, per_seq, 0.0)) / jnp.maximum(jnp.sum(has), 1)
    raise ValueError(f"unknown aggregation {mode!r}")


# ----------------------------------------------------------------------------------------------
# Advantages


def gae(
    rewards: Array,  # [E, S]
    values: Array,  # [E, S]
    mask: Array,  # [E, S]
    gamma: float,
    lam: float,
) -> tuple[Array, Array]:
    """Generalised advantage estimation over model tokens only. Returns ``(advantages, returns)``, ``[E, S]``.

    Non-model tokens (prompt, environment feedback, padding) are not decisions: the recursion jumps
    from a model token straight to the previous model token, so feedback tokens neither discount
    nor bootstrap. For model token t with next model token t':
    ``delta_t = r_t + gamma * V_t' - V_t``, ``A_t = delta_t + gamma * lam * A_t'``; after the last
    model token the bootstrap value is 0 (episodes end there or are truncated by the turn cap).
    A reward sitting on a non-model token is credited (undiscounted) to the preceding model token,
    so nothing is lost; rewards before the first model token are dropped.
    Advantages and returns are 0 at non-model tokens. Reverse ``lax.scan`` over time.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    m = jnp.asarray(mask).astype(bool)
    e = rewards.shape[0]

    def step(carry, xs):
        next_v, next_a, pending = carry  # [E] each
        r, v, mk = xs
        delta = r + pending + gamma * next_v - v
        a = delta + gamma * lam * next_a
        new_carry = (
            jnp.where(mk, v, next_v),
            jnp.where(mk, a, next_a),
            jnp.where(mk, 0.0, pending + r),
        )
        return new_carry, jnp.where(mk, a, 0.0)

    zeros = jnp.zeros((e,), jnp.float32)
    _, adv_t = jax.lax.scan(step, (zeros, zeros, zeros), (rewards.T, values.T, m.T), reverse=True)
    adv = adv_t.T
    returns = jnp.where(m, adv + values, 0.0)
    return adv, returns


def grpo_advantages(
    episode_rewards: Array,  # [E]
    mask: Array,  # [E, S]
    group_ids: Array | None = None,  # [E] int in [0, E)
    group_size: int | None = None,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> Array:
    """Group-normalised (GRPO-style) advantages broadcast to model tokens, ``[E, S]``.

    Episodes of the same group (same level, several samples) are compared with each other:
    ``A = (R - mean_g) / (std_g + eps)`` with the population std (ddof=0). Give either ``group_ids``
    (any int labels in ``[0, E)``) or ``group_size`` (consecutive blocks of that size).
    A group whose rewards are all equal gets advantage 0.
    """
    r = jnp.asarray(episode_rewards, jnp.float32)
    e = r.shape[0]
    if group_ids is None:
        if group_size is None:
            raise ValueError("give group_ids or group_size")
        if e % group_size:
            raise ValueError(f"{e} episodes are not divisible into groups of {group_size}")
        group_ids = jnp.arange(e) // group_size
    gid = jnp.asarray(group_ids, jnp.int32)
    count = jax.ops.segment_sum(jnp.ones_like(r), gid, num_segments=e)
    mean = jax.ops.segment_sum(r, gid, num_segments=e) / jnp.maximum(count, 1.0)
    centred = r - mean[gid]
    adv = centred
    if scale_by_std:
        var = jax.ops.segment_sum(jnp.square(centred), gid, num_segments=e) / jnp.maximum(count, 1.0)
        adv = centred / (jnp.sqrt(var)[gid] + eps)
    return adv[:, None] * jnp.asarray(mask).astype(jnp.float32)


def normalise(adv: Array, mask: Array, eps: float = 1e-6) -> Array:
    """Whiten advantages over model tokens (zero elsewhere)."""
    mu = masked_mean(adv, mask)
    std = jnp.sqrt(masked_var(adv, mask))
    return jnp.where(mask.astype(bool), (adv - mu) / (std + eps), 0.0)


def compute_advantages(cfg: PPOConfig, batch: Mapping[str, Array]) -> tuple[Array, Array]:
    """Advantages and value targets ``[E, S]`` for a rollout batch, before any minibatching.

    ``'gae'`` uses ``batch['rewards']`` (token rewards) and the rollout's ``batch['values']``.
    ``'grpo'`` uses ``batch['episode_rewards']`` and ``batch['group_ids']`` (value targets are then
    the episode reward on each model token; set ``vf_coef=0`` if no critic is wanted).
    """
    mask = jnp.asarray(batch["mask"]).astype(bool)
    if cfg.advantage == "gae":
        adv, ret = gae(batch["rewards"], batch["values"], mask, cfg.gamma, cfg.lam)
    else:
        adv = grpo_advantages(batch["episode_rewards"], mask, group_ids=batch["group_ids"], eps=cfg.adv_eps)
        ret = jnp.asarray(batch["episode_rewards"], jnp.float32)[:, None] * mask
    if cfg.normalise_advantages:
        adv = normalise(adv, mask, cfg.adv_eps)
    return adv, ret


# ----------------------------------------------------------------------------------------------
# Per-token quantities and losses


def next_token_stats(logits: Array, tokens: Array, temperature: float = 1.0, mask: Array | None = None,
                     max_trained: int = 0) -> tuple[Array, Array, Array]:
    """Log-probs, entropies and argmax hits of each token, 3 x ``[M, S]``; position 0 is 0 / False.

    ``logits [M, S, V]`` (divided by ``temperature``: the tempered policy) at position t predict
    ``tokens[:, t + 1]``; returned ``logprobs[:, t] = log p(tokens[:, t] | tokens[:, :t])``, ``entropy[:, t]``
    the entropy of the distribution token t was drawn from and ``hits[:, t]`` whether its argmax was token t.
    The one dispatch over the forward's outputs (PPO's losses and the warm start's read it): from a
    LogitsHead with a ``mask [M, S]`` and ``max_trained`` K, 0 < K < S (at least the mask's count in every
    row), the mask's positions only, 0 / False elsewhere, the LM head computed at K positions per row
    (`trained_token_stats`); from a LogitsHead with chunks, every position chunk by chunk
    (`every_token_stats`); otherwise from the whole ``[M, S, V]`` at once. Unused outputs (the hits in
    PPO) are dead code under jit.
    """
    if isinstance(logits, LogitsHead):  # the LM head applied here: where it is read, or chunk by chunk
        if mask is not None and 0 < max_trained < tokens.shape[1]:
            return trained_token_stats(logits, tokens, mask, max_trained, temperature)
        if logits.chunk > 0:
            return every_token_stats(logits, tokens, temperature)
        logits = logits.logits(logits.hidden)  # every position, all at once: the plain path below
    # Every position's distribution, the last one's too (it predicts nothing and is dropped after the
    # reductions): slicing the [M, S, V] logits to S - 1 positions first made XLA copy them, and pad
    # their gradient back (a profile of the scratch model's training step: the copy was its largest
    # single element-wise op).
    logits = logits.astype(jnp.float32)
    hits = jnp.argmax(logits, axis=-1)[:, :-1] == tokens[:, 1:]  # [M, S-1]; the temperature keeps the argmax
    if temperature != 1.0:  # static: the default path traces no division
        logits = logits / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)  # [M, S, V]
    nxt = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)  # [M, S]; last column a placeholder
    # The target's log-prob by a one-hot select, not a gather: a gather's gradient is a scatter into
    # [M, S, V], which XLA:CPU runs slowly (~5% of a scratch model's training step).
    pick = nxt[..., None] == jnp.arange(logp_all.shape[-1], dtype=nxt.dtype)  # [M, S, V]
    lp = jnp.sum(jnp.where(pick, logp_all, 0.0), axis=-1)[:, :-1]  # [M, S-1]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)[:, :-1]  # [M, S-1]
    pad = jnp.zeros((tokens.shape[0], 1), jnp.float32)
    return (jnp.concatenate([pad, lp], axis=1), jnp.concatenate([pad, ent], axis=1),
            jnp.concatenate([jnp.zeros_like(pad, bool), hits], axis=1))


def token_logprobs_and_values(logits: Array, values: Array, tokens: Array, temperature: float = 1.0,
                              mask: Array | None = None, max_trained: int = 0) -> tuple[Array, Array, Array]:
    """`next_token_stats`' log-probs, the values shifted to the same alignment and its entropies, 3 x
    ``[M, S]``: ``values[:, t] = value_head[:, t - 1]`` (the value of the state token t was drawn in);
    position 0 is 0."""
    lp, ent, _ = next_token_stats(logits, tokens, temperature, mask, max_trained)
    v = values[:, :-1].astype(jnp.float32)
    return lp, jnp.concatenate([jnp.zeros((tokens.shape[0], 1), jnp.float32), v], axis=1), ent


def head_stats(head: LogitsHead, h: Array, targets: Array, temperature: float = 1.0
               ) -> tuple[Array, Array, Array]:
    """The LM head on states ``h [M, N, D]`` against ``targets [M, N]`` (the token each state predicts):
    log-probs, entropies and whether the argmax was the target, 3 x ``[M, N]``. With ``head.chunk`` > 0,
    ``chunk`` positions at a time in a rolled loop, each chunk rematerialised in the backward pass, so
    neither pass holds more than one chunk's ``[M, chunk, V]`` logits; all at once otherwise."""

    def stats(weight, hc, tc):  # [M, C, D], [M, C] -> 3 x [M, C]
        logits = head.replace(weight=weight).logits(hc)  # [M, C, V] float32
        if temperature != 1.0:
            logits = logits / temperature
        logp = jax.nn.log_softmax(logits, axis=-1)
        pick = tc[..., None] == jnp.arange(logp.shape[-1], dtype=tc.dtype)  # a select, not a gather (above)
        lp = jnp.sum(jnp.where(pick, logp, 0.0), axis=-1)
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        return lp, ent, jnp.argmax(logits, axis=-1) == tc

    M, N, D = h.shape
    if head.chunk <= 0:
        return stats(head.weight, h, targets)
    C = max(1, min(int(head.chunk), N))
    n = -(-N // C)
    pad = n * C - N
    hs = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(M, n, C, D).swapaxes(0, 1)  # [n, M, C, D]
    ts = jnp.pad(targets, ((0, 0), (0, pad))).reshape(M, n, C).swapaxes(0, 1)  # [n, M, C]
    chunk_stats = jax.checkpoint(stats)
    _, out = jax.lax.scan(lambda c, xs: (c, chunk_stats(head.weight, *xs)), None, (hs, ts))
    return tuple(a.swapaxes(0, 1).reshape(M, n * C)[:, :N] for a in out)


def every_token_stats(head: LogitsHead, tokens: Array, temperature: float = 1.0
                      ) -> tuple[Array, Array, Array]:
    """`next_token_stats` from a LogitsHead at every position (`head_stats`: chunk by chunk with
    ``head.chunk``, all at once without)."""
    M = tokens.shape[0]
    nxt = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)  # [M, S]; last column a placeholder
    out = head_stats(head, head.hidden, nxt, temperature)  # [M, S]: position t's prediction of token t + 1
    shift = lambda a, fill: jnp.concatenate([jnp.full((M, 1), fill, a.dtype), a[:, :-1]], axis=1)  # noqa: E731
    lp, ent, hits = out
    return shift(lp, 0.0), shift(ent, 0.0), shift(hits, False)


def trained_positions(mask: Array, k: int) -> Array:
    """``idx [M, k]``: the first k positions t >= 1 of each row where ``mask [M, S]`` is true, ascending, then
    zeros (position 0 has no prediction: never one of them)."""
    mask = jnp.asarray(mask).astype(bool).at[:, 0].set(False)
    return jax.vmap(lambda r: jnp.nonzero(r, size=k, fill_value=0)[0])(mask).astype(jnp.int32)


def trained_token_stats(head: LogitsHead, tokens: Array, mask: Array, k: int, temperature: float = 1.0
                        ) -> tuple[Array, Array, Array]:
    """`every_token_stats` at the positions where ``mask [M, S]`` is true, 0 (False) elsewhere,
    the LM head computed at k positions per row (the states at t - 1 that predict those tokens t)
    instead of all S: a loss that reads a third of an episode's tokens (PPO's model tokens) or a tenth
    (the warm start's answers) skips the rest of the [M, S, V] logits, forward and backward. k must be
    at least every row's count of mask positions (beyond k they would read as 0: the callers derive k
    from a bound, or count it)."""
    M, S = tokens.shape
    k = max(1, min(int(k), S))
    idx = trained_positions(mask, k)  # [M, k]
    real = idx > 0
    h = jnp.take_along_axis(head.hidden, jnp.maximum(idx - 1, 0)[..., None], axis=1)  # [M, k, D]
    targets = jnp.take_along_axis(tokens, idx, axis=1)  # [M, k]
    lp, ent, hits = head_stats(head, h, targets, temperature)
    rows = jnp.arange(M)[:, None]
    back = lambda a: jnp.zeros((M, S), a.dtype).at[rows, idx].add(jnp.where(real, a, 0))  # noqa: E731
    return back(lp), back(ent), back(hits.astype(jnp.int32)) > 0


def entropy_from_logits(logits: Array) -> Array:
    """Entropy (nats) of ``softmax(logits)`` over the last axis."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def policy_loss_per_token(
    logprobs: Array, old_logprobs: Array, advantages: Array, clip_low: float, clip_high: float
) -> tuple[Array, Array]:
    """PPO clipped surrogate per token (to minimise) and the 'clipped' indicator.

    ``max(-A r, -A clip(r, 1-clip_low, 1+clip_high))``: the pessimistic bound removes the incentive
    to move the ratio beyond the trust region.
    """
    ratio = jnp.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return jnp.maximum(pg1, pg2), (pg2 > pg1).astype(jnp.float32)


def value_loss_per_token(
    values: Array, old_values: Array, returns: Array, value_clip: float | None
) -> tuple[Array, Array]:
    """``0.5 * max((V - R)^2, (V_clip - R)^2)`` per token, ``V_clip = V_old + clip(V - V_old, ±c)``.

    With ``value_clip=None`` the plain squared error. Also returns the 'clipped' indicator.
    """
    err = jnp.square(values - returns)
    if value_clip is None:
        return 0.5 * err, jnp.zeros_like(err)
    v_clip = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
    err_clip = jnp.square(v_clip - returns)
    return 0.5 * jnp.maximum(err, err_clip), (err_clip > err).astype(jnp.float32)


def kl_k3(logprobs: Array, ref_logprobs: Array) -> Array:
    """Per-token k3 estimator of KL(pi || ref): ``exp(d) - d - 1`` with ``d = ref - logp``; >= 0, unbiased."""
    d = ref_logprobs - logprobs
    return jnp.exp(d) - d - 1.0


def explained_variance(pred: Array, target: Array, mask: Array) -> Array:
    """``1 - Var(target - pred) / Var(target)`` over model tokens (nan-free: 0 when Var(target)=0)."""
    vt = masked_var(target, mask)
    return jnp.where(vt > 0, 1.0 - masked_var(target - pred, mask) / jnp.where(vt > 0, vt, 1.0), 0.0)


def ppo_loss(
    cfg: PPOConfig,
    logprobs: Array,  # [M, S] new log-probs (aligned)
    values: Array,  # [M, S] new values (aligned)
    entropy: Array,  # [M, S]
    batch: Mapping[str, Array],  # minibatch: mask, logprobs, values, advantages, returns, (ref_logprobs)
) -> tuple[Array, dict[str, Array]]:
    """Total PPO loss (scalar) and metrics, given aligned per-token model outputs."""
    mask = jnp.asarray(batch["mask"]).astype(bool)
    agg = lambda x: aggregate(x, mask, cfg.loss_agg)  # noqa: E731
    pg, pg_clipped = policy_loss_per_token(
        logprobs, batch["logprobs"], batch["advantages"], cfg.clip_low, cfg.clip_high
    )
    vl, v_clipped = value_loss_per_token(values, batch["values"], batch["returns"], cfg.value_clip)
    pg_loss, v_loss, ent = agg(pg), agg(vl), agg(entropy)
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
    log_ratio = logprobs - batch["logprobs"]
    metrics = {
        "policy_loss": pg_loss,
        "value_loss": v_loss,
        "entropy": masked_mean(entropy, mask),
        "approx_kl": masked_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, mask),  # k3 of KL(old || new)
        "clip_frac": masked_mean(pg_clipped, mask),
        "value_clip_frac": masked_mean(v_clipped, mask),
        "ratio_mean": masked_mean(jnp.exp(log_ratio), mask),
        "explained_variance": explained_variance(values, batch["returns"], mask),
    }
    if cfg.kl_coef > 0:
        if "ref_logprobs" not in batch:
            raise ValueError("kl_coef > 0 needs batch['ref_logprobs']")
        kl = agg(kl_k3(logprobs, batch["ref_logprobs"]))
        loss = loss + cfg.kl_coef * kl
        metrics["kl_ref"] = kl
    metrics["loss"] = loss
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# The update


def width_buckets(width: int, base: int = 128) -> tuple:
    """base, 2*base, ... below `width`, then `width`: the update's static sequence widths."""
    out, w = [], base
    while w < width:
        out.append(w)
        w *= 2
    return tuple(out) + (width,)


def at_width_bucket(mask: Array, buckets: tuple, fn: Callable[[int], Any]) -> Any:
    """``fn(W)`` for the smallest static width W of ``buckets`` (or the full width S of ``mask [E, S]``)
    holding every model token: one ``lax.switch`` branch per width, each compiled once. ``fn`` must return
    the same shapes for every W (e.g. pad back to S). Trailing padding is never read, so the result is that
    of ``fn(S)``, only cheaper."""
    width = mask.shape[1]
    widths = [w for w in buckets if w < width]
    if not widths:
        return fn(width)
    mask = jnp.asarray(mask).astype(bool)
    need = jnp.max(jnp.where(jnp.any(mask, axis=0), jnp.arange(width) + 1, 0))
    index = jnp.sum(jnp.asarray(widths) < need)
    return jax.lax.switch(index, [functools.partial(fn, w) for w in widths] + [functools.partial(fn, width)])


def make_update(
    cfg: PPOConfig, apply_fn: ApplyFn, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Mapping[str, Array], Array], tuple[TrainState, dict[str, Array]]]:
    """Build ``update(train_state, batch, key) -> (train_state, metrics)``; wrap it in ``jax.jit``.

    ``batch`` holds ``[E, S]`` arrays ``tokens``, ``mask``, ``logprobs``, ``values`` (rollout-time,
    aligned as in the module docstring) and either ``rewards`` (GAE) or ``episode_rewards`` [E] +
    ``group_ids`` [E] (GRPO); optionally ``ref_logprobs``, or precomputed ``advantages`` and
    ``returns`` (then used as given). Advantages are computed once on the whole batch, then
    ``cfg.epochs`` x ``cfg.minibatches`` optimizer steps run as nested ``lax.scan`` over shuffled
    episode minibatches (E must be divisible by ``cfg.minibatches``). ``apply_fn(params, tokens)``
    returns raw ``(logits [M,S,V] or a LogitsHead, values [M,S])``; the next-token shift is done here.
    Metrics are means over all optimizer steps, plus ``grad_norm`` (pre-clipping).
    """

    def loss_fn(params, mb):
        logits, vals = apply_fn(params, mb["tokens"])
        lp, v, ent = token_logprobs_and_values(logits, vals, mb["tokens"], cfg.temperature, mb["mask"],
                                               cfg.max_trained)
        loss, metrics = ppo_loss(cfg, lp, v, ent, mb)
        if isinstance(logits, LogitsHead) and cfg.max_trained > 0:  # every width bucket: one metrics structure
            count = jnp.sum(jnp.asarray(mb["mask"]).astype(jnp.int32), axis=1)  # [M]
            metrics["max_trained_exceeded"] = jnp.mean((count > cfg.max_trained).astype(jnp.float32))
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(state: TrainState, batch: Mapping[str, Array], key: Array):
        batch = dict(batch)
        e = batch["tokens"].shape[0]
        if e % cfg.minibatches:
            raise ValueError(f"{e} episodes not divisible into {cfg.minibatches} minibatches")
        mb_size = e // cfg.minibatches
        if "advantages" not in batch or "returns" not in batch:
            batch["advantages"], batch["returns"] = compute_advantages(cfg, batch)
        keep = ("tokens", "mask", "logprobs", "values", "advantages", "returns", "ref_logprobs")
        data = {k: batch[k] for k in keep if k in batch}
        if cfg.kl_coef <= 0:
            data.pop("ref_logprobs", None)

        def sgd_step(st: TrainState, data, idx):  # idx [mb_size]
            mb = jax.tree.map(lambda x: x[idx], data)
            (_, metrics), grads = grad_fn(st.params, mb)
            updates, opt_state = optimizer.update(grads, st.opt_state, st.params)
            params = optax.apply_updates(st.params, updates)
            metrics["grad_norm"] = optax.global_norm(grads)
            return st.replace(params=params, opt_state=opt_state, step=st.step + 1), metrics

        def epochs(st: TrainState, data):
            def epoch(st: TrainState, k):
                perm = jax.random.permutation(k, e).reshape(cfg.minibatches, mb_size)
                return jax.lax.scan(lambda s, idx: sgd_step(s, data, idx), st, perm)

            return jax.lax.scan(epoch, st, jax.random.split(key, cfg.epochs))

        state, metrics = at_width_bucket(
            data["mask"], cfg.width_buckets, lambda w: epochs(state, jax.tree.map(lambda x: x[:, :w], data)))
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["advantage_mean"] = masked_mean(batch["advantages"], batch["mask"])
        return state, metrics

    return update


__all__ = [
    "PPOConfig",
    "TrainState",
    "make_optimizer",
    "make_update",
    "gae",
    "grpo_advantages",
    "compute_advantages",
    "normalise",
    "next_token_stats",
    "token_logprobs_and_values",
    "entropy_from_logits",
    "policy_loss_per_token",
    "value_loss_per_token",
    "kl_k3",
    "explained_variance",
    "ppo_loss",
    "aggregate",
    "masked_mean",
]
