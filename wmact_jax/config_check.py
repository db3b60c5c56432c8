"""Validates a run configuration before any work starts, and applies the method presets.

A typo such as ``--config.ppo.lrr=1e-4`` or ``--config.method=wmcat`` should fail in a second with a
message naming the field and the closest valid name, not after a ten-minute warm start (or, worse,
silently train with the default). Everything is checked against ``configs/base.py:get_config()``,
the single source of truth for which fields exist and what type each has.

``resolve_method`` turns the one-word ``method`` (the paper's baselines and ablations) into the
concrete reward / annealing / rollout settings, leaving alone any field the user set explicitly.
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import Any, Iterable, Mapping

import ml_collections

from wmact_jax import prompts

METHODS = ("entire_plan", "interactive", "rescale", "anneal", "wmact", "step_penalty")

# String enums: field -> allowed values.
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "model.source": ("scratch", "pretrained"),
    "model.dtype": ("float32", "bfloat16"),
    "model.kv_cache_dtype": ("", "float32", "bfloat16"),
    "model.critic": ("shared", "head", "separate"),
    "rollout.system_prompt": prompts.SYSTEM_STYLES,
    "reward.outcome": ("success", "env_return"),
    "reward.step_penalty_unit": ("turn", "action"),
    "reward.placement": ("turn", "episode"),
    "anneal.kind": ("wmact", "fixed", "linear"),
    "anneal.rounding": ("ceil", "round", "floor"),
    "ppo.schedule": ("constant", "cosine"),
    "ppo.advantage": ("gae", "grpo"),
    "warmstart.chunk": ("plan", "random"),
}

EVAL_MODES = ("greedy", "sampled", "single_turn", "greedy_l0")

# What each method sets (applied by `resolve_method` unless the user set the field explicitly).
# `None` values are computed from the config (see `_method_values`).
STEP_PENALTY_PER_TURN = 0.1


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""


def _base_config() -> ml_collections.ConfigDict:
    """`configs.base.get_config()`, importable whatever the working directory."""
    try:
        from configs import base  # type: ignore
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if root not in sys.path:
            sys.path.insert(0, root)
        from configs import base  # type: ignore
    return base.get_config()


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{'ppo.lr': 1e-4, ...}`` for every leaf of a (nested) ConfigDict or mapping."""
    out: dict[str, Any] = {}
    items = config.items() if hasattr(config, "items") else []
    for k, v in items:
        path = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, Mapping)):
            sub = flatten(v, path + ".")
            if sub:
                out.update(sub)
            else:
                out[path] = v
        else:
            out[path] = v
    return out


ABSENT = "(unset)"


def differences(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """[(dotted field, old value, new value)] where two configs differ, sorted by field; a field one of
    them lacks has the value `ABSENT`. Nested ConfigDicts/mappings and flat dotted dicts alike; no jax
    (the experiment runner checks settings before jax loads)."""
    fo, fn = flatten(old), flatten(new)
    return [(k, fo.get(k, ABSENT), fn.get(k, ABSENT)) for k in sorted(set(fo) | set(fn))
            if fo.get(k, ABSENT) != fn.get(k, ABSENT)]


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The most similar valid dotted name (full path first, then the leaf within any section)."""
    candidates = list(candidates)
    hit = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if hit:
        return hit[0]
    leaf = name.rsplit(".", 1)[-1]
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
    hit = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[hit[0]] if hit else None


def _type_ok(value: Any, ref: Any) -> bool:
    if isinstance(ref, bool):
        return isinstance(value, bool)
    if isinstance(ref, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(ref, str):
        return isinstance(value, str)
    if isinstance(ref, (tuple, list)):
        return isinstance(value, (tuple, list))
    return True


def _type_name(ref: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(ref), "tuple")


def check_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises `ConfigError` listing every unknown field, wrong type and out-of-range value.

    Args:
      config: the (method-resolved) run configuration.
      num_devices: if given (e.g. ``jax.device_count()``), also checks that the mesh fits.
    """
    base = flatten(_base_config())
    flat = flatten(config)
    errors: list[str] = []
    structural = 0  # missing fields / wrong types: the value checks below cannot run

    for path in sorted(set(flat) - set(base)):
        near = closest(path, base)
        hint = f"; did you mean '{near}'?" if near else ""
        errors.append(f"unknown field '{path}'{hint}")
    for path in sorted(set(base) - set(flat)):
        errors.append(f"missing field '{path}' (every config must start from configs/base.py)")
        structural += 1
    for path in sorted(set(flat) & set(base)):
        if not _type_ok(flat[path], base[path]):
            errors.append(f"'{path}' must be a {_type_name(base[path])}, got {flat[path]!r} "
                          f"({type(flat[path]).__name__})")
            structural += 1
    if structural:  # Value checks below assume the fields exist with the right types.
        raise ConfigError(_format(errors))

    for path, allowed in CHOICES.items():
        if flat[path] not in allowed:
            near = difflib.get_close_matches(str(flat[path]), allowed, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            errors.append(f"'{path}' is {flat[path]!r}, must be one of {list(allowed)}{hint}")

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    def positive(*paths: str) -> None:
        for p in paths:
            need(flat[p] > 0, f"'{p}' must be > 0, got {flat[p]!r}")

    def nonneg(*paths: str) -> None:
        for p in paths:
            need(flat[p] >= 0, f"'{p}' must be >= 0, got {flat[p]!r}")

    c = config
    # Environment.
    known = _known_envs()
    if known is not None:
        for p, names in (("env.name", [c.env.name]), ("env.eval_names", list(c.env.eval_names))):
            for n in names:
                if n not in known:
                    near = difflib.get_close_matches(str(n), known, n=1, cutoff=0.5)
                    hint = f"; did you mean '{near[0]}'?" if near else ""
                    errors.append(f"'{p}': unknown environment {n!r}{hint} (known: {known})")
    positive("env.max_steps")

    # Model.
    if c.model.source == "pretrained":
        need(bool(c.model.path), "'model.path' is required when model.source='pretrained' "
             "(a Hugging Face folder, a .gguf file, or 'smollm2-135m-instruct')")
    else:
        positive("model.hidden_size", "model.intermediate_size", "model.num_layers",
                 "model.num_heads", "model.num_kv_heads")
        if c.model.num_heads > 0 and c.model.num_kv_heads > 0:
            need(c.model.hidden_size % c.model.num_heads == 0,
                 f"'model.hidden_size' ({c.model.hidden_size}) must be divisible by "
                 f"'model.num_heads' ({c.model.num_heads})")
            need(c.model.num_heads % c.model.num_kv_heads == 0,
                 f"'model.num_heads' ({c.model.num_heads}) must be divisible by "
                 f"'model.num_kv_heads' ({c.model.num_kv_heads})")

    need(not (c.model.remat_attention and c.model.flash_attention),
         "'model.remat_attention' and 'model.flash_attention' are two ways to cut the attention's memory: set "
         "one (flash_attention: the causal triangle's FLOPs only)")

    # Rollout.
    r = c.rollout
    positive("rollout.levels_per_iteration", "rollout.group_size", "rollout.max_turn_tokens",
             "rollout.max_actions_per_turn", "rollout.max_actions", "rollout.context_len",
             "rollout.temperature")
    nonneg("rollout.top_k", "model.logits_chunk", "model.mlp_chunk")
    need(0 < r.top_p <= 1, f"'rollout.top_p' must be in (0, 1], got {r.top_p!r}")
    need(r.temperature == 1 or (r.top_k == 0 and r.top_p == 1),
         f"'rollout.temperature' {r.temperature!r} trains the tempered policy softmax(logits / temperature); "
         "with 'rollout.top_k' or 'rollout.top_p' the tokens come from a filtered distribution PPO's ratio "
         "does not model: use one or the other")
    need(r.max_actions_per_turn <= r.max_actions,
         f"'rollout.max_actions_per_turn' ({r.max_actions_per_turn}) exceeds 'rollout.max_actions' "
         f"({r.max_actions})")
    need(r.context_len > r.max_turn_tokens,
         f"'rollout.context_len' ({r.context_len}) must exceed 'rollout.max_turn_tokens' "
         f"({r.max_turn_tokens}): the prompt and at least one turn must fit")

    # Reward.
    nonneg("reward.format_penalty", "reward.step_penalty", "reward.revisit_penalty")

    # Annealing.
    a = c.anneal
    positive("anneal.l0", "anneal.tau", "anneal.floor", "anneal.final", "anneal.linear_iterations")
    need(a.floor >= 1, f"'anneal.floor' must be >= 1 (a turn is needed to answer), got {a.floor!r}")
    need(a.l0 >= a.floor, f"'anneal.l0' ({a.l0}) must be >= 'anneal.floor' ({a.floor})")
    if a.kind == "linear":
        need(a.final >= a.floor, f"'anneal.final' ({a.final}) must be >= 'anneal.floor' ({a.floor})")

    # PPO.
    p = c.ppo
    positive("ppo.lr", "ppo.clip_low", "ppo.clip_high", "ppo.value_clip", "ppo.epochs",
             "ppo.minibatches", "ppo.max_grad_norm")
    nonneg("ppo.critic_lr", "ppo.warmup_steps", "ppo.vf_coef", "ppo.ent_coef", "ppo.kl_coef")
    need(0 <= p.gamma <= 1, f"'ppo.gamma' must be in [0, 1], got {p.gamma!r}")
    need(0 < p.lam <= 1, f"'ppo.lam' must be in (0, 1], got {p.lam!r}")
    batch = r.levels_per_iteration * r.group_size
    if p.minibatches > 0:
        need(batch % p.minibatches == 0,
             f"rollout.levels_per_iteration * rollout.group_size = {batch} episodes must be "
             f"divisible by 'ppo.minibatches' ({p.minibatches})")
    if p.advantage == "grpo":
        need(r.group_size >= 2, "'ppo.advantage'='grpo' needs 'rollout.group_size' >= 2 "
             f"(group-relative advantages of a group of one are zero), got {r.group_size}")

    # Warm start.
    w = c.warmstart
    nonneg("warmstart.steps", "warmstart.length_bucket", "warmstart.state_loss")
    need(0 <= w.single_turn_fraction <= 1,
         f"'warmstart.single_turn_fraction' must be in [0, 1], got {w.single_turn_fraction!r}")
    positive("warmstart.batch_size", "warmstart.lr", "warmstart.num_levels")
    need(0 <= w.plan_fraction <= 1, f"'warmstart.plan_fraction' must be in [0, 1], got {w.plan_fraction!r}")
    need(0 <= w.noise < 1, f"'warmstart.noise' must be in [0, 1), got {w.noise!r}")
    need(0 <= w.recover < 1, f"'warmstart.recover' must be in [0, 1), got {w.recover!r}")
    need(0 <= w.curriculum < 1, f"'warmstart.curriculum' must be in [0, 1), got {w.curriculum!r}")
    need(0 <= w.curriculum_exit < 1, f"'warmstart.curriculum_exit' must be in [0, 1), got {w.curriculum_exit!r}")
    nonneg("warmstart.curriculum_max_steps", "warmstart.plan_actions", "warmstart.target_loss")
    need(w.max_cycles >= 1, f"'warmstart.max_cycles' must be >= 1, got {w.max_cycles!r}")
    if w.target_loss:
        need(w.max_cycles >= 2, "'warmstart.target_loss' adds cycles while the loss is above it: it needs "
             f"'warmstart.max_cycles' >= 2, got {w.max_cycles!r}")
    need(not w.budget_aware or bool(c.rollout.turns_left),
         "'warmstart.budget_aware' shapes the demos' play by the stated turns left: set rollout.turns_left=True")
    need(w.seed >= -1, f"'warmstart.seed' must be >= 0, or -1 for the run's seed; got {w.seed!r}")
    need(w.mixed_one_action_share <= 1, "'warmstart.mixed_one_action_share' must be <= 1 (< 0: demos pooled), "
         f"got {w.mixed_one_action_share!r}")
    if w.curriculum_exit:
        need(w.curriculum > 0, "'warmstart.curriculum_exit' extends the one-action phase: it needs "
             f"'warmstart.curriculum' > 0, got {w.curriculum!r}")
    if w.enabled and not w.path:
        need(w.steps >= 1, "'warmstart.steps' must be >= 1 when warmstart.enabled (or set "
             "warmstart.enabled=False)")
    if w.path:
        need(os.path.exists(w.path), f"'warmstart.path' {w.path!r} does not exist")
    if w.init:
        need(os.path.exists(os.path.join(w.init, "warmstart.json")),
             f"'warmstart.init' {w.init!r} is not a saved warm start (no warmstart.json in it)")

    # Training loop.
    nonneg("train.iterations", "train.eval_every", "train.transcripts", "train.final_eval_levels", "ppo.width_bucket")
    for mode in c.train.eval_modes:
        need(mode in EVAL_MODES, f"'train.eval_modes': unknown mode {mode!r}, must be among {list(EVAL_MODES)}")
    positive("train.log_every", "train.eval_levels", "train.checkpoint_every",
             "train.keep_checkpoints")

    # Mesh.
    m = c.mesh
    need(m.data == -1 or m.data >= 1, f"'mesh.data' must be -1 (all remaining devices) or >= 1, "
         f"got {m.data!r}")
    positive("mesh.fsdp", "mesh.tp")
    if num_devices is not None and m.fsdp > 0 and m.tp > 0:
        other = m.fsdp * m.tp
        data = num_devices // other if m.data == -1 else m.data
        need(num_devices % other == 0 and data * other == num_devices,
             f"mesh data={m.data} x fsdp={m.fsdp} x tp={m.tp} does not match the {num_devices} "
             "devices available")
        if data * other == num_devices and data * m.fsdp > 0:
            need(batch % (data * m.fsdp) == 0,
                 f"{batch} episodes per iteration cannot be split evenly over "
                 f"{data * m.fsdp} data-parallel shards (mesh.data x mesh.fsdp)")

    # Distributed.
    d = c.distributed
    nonneg("distributed.num_processes")
    need(d.process_id >= -1, f"'distributed.process_id' must be >= -1, got {d.process_id!r}")
    if d.coordinator:
        need(":" in d.coordinator, f"'distributed.coordinator' must be host:port, got {d.coordinator!r}")
    if d.num_processes > 0 and d.process_id >= 0:
        need(d.process_id < d.num_processes, f"'distributed.process_id' ({d.process_id}) must be < "
             f"'distributed.num_processes' ({d.num_processes})")

    if errors:
        raise ConfigError(_format(errors))


def _format(errors: list[str]) -> str:
    n = len(errors)
    return f"invalid configuration ({n} problem{'s' * (n != 1)}):\n  - " + "\n  - ".join(errors)


def _known_envs() -> list[str] | None:
    """Registered environment names; None if `envs_jax` cannot be imported (checked later)."""
    try:
        import envs_jax
    except ImportError:
        return None
    return list(envs_jax.list_envs())


def _method_values(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The field values that define `config.method` (the paper's baselines and ablations)."""
    interactive = {"anneal.kind": "fixed", "reward.rescale": False, "reward.step_penalty": 0.0}
    m = config.method
    if m == "entire_plan":
        # One turn carrying the whole plan: no feedback, so no annealing and nothing to rescale.
        return {"anneal.kind": "fixed", "anneal.l0": 1, "reward.rescale": False,
                "reward.step_penalty": 0.0,
                "rollout.max_actions_per_turn": config.rollout.max_actions}
    if m == "interactive":
        return interactive
    if m == "rescale":
        return {**interactive, "reward.rescale": True}
    if m == "anneal":
        return {**interactive, "anneal.kind": "wmact"}
    if m == "wmact":
        return {**interactive, "reward.rescale": True, "anneal.kind": "wmact"}
    if m == "step_penalty":
        return {**interactive, "reward.rescale": True, "reward.step_penalty": STEP_PENALTY_PER_TURN,
                "reward.step_penalty_unit": "turn"}
    raise ConfigError(f"'method' is {m!r}, must be one of {list(METHODS)}"
                      + (f"; did you mean '{difflib.get_close_matches(str(m), METHODS, n=1)[0]}'?"
                         if difflib.get_close_matches(str(m), METHODS, n=1) else ""))


# Fields without which a method is not itself: set from the method even when a preset changed them
# (only a command-line override wins). A preset's 4 actions per turn must not cap a whole plan.
_DEFINING = {"entire_plan": ("anneal.kind", "anneal.l0", "rollout.max_actions_per_turn")}


def defining_fields(method: str) -> tuple[str, ...]:
    """The fields that make `method` what it is (entire_plan: one turn holding the whole plan)."""
    return _DEFINING.get(method, ())


def resolve_method(config: ml_collections.ConfigDict,
                   explicit: Iterable[str] | None = None) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with the settings `config.method` implies.

    A field counts as set explicitly by the user (and is then left alone) if it is in `explicit`
    (e.g. the command-line overrides, ``config_flags.get_override_values``) or if its value
    differs from ``configs/base.py``: a preset or override that changes it wins over the method,
    except for the fields that define the method (`_DEFINING`), where only `explicit` wins.
    Idempotent. Methods:
      entire_plan: 1 turn (anneal fixed, l0=1), the answer carries the whole plan
        (max_actions_per_turn = max_actions), no rescaling.
      interactive: multi-turn, cap fixed at l0, no rescaling.
      rescale: interactive + reward rescaling.      anneal: interactive + WMAct annealing.
      wmact: rescaling + annealing.
      step_penalty: interactive + rescaling + a flat 0.1 per-turn penalty instead of annealing.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    base = flatten(_base_config())
    explicit = set(explicit or ())
    defining = _DEFINING.get(out.method, ())
    for path, value in _method_values(out).items():
        current = _get(out, path)
        user_set = path in explicit or (path not in defining and path in base and current != base[path])
        if not user_set:
            set_field(out, path, value)
    return out


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """config[path] = value for a dotted path, coerced to the field's type (int -> float, list ->
    tuple); an unknown field is a ConfigError naming it."""
    *parents, leaf = path.split(".")
    node = config
    for part in parents + [leaf]:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config field {path!r}")
        if part != leaf:
            node = node[part]
    ref = node[leaf]
    if isinstance(ref, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(ref, tuple) and isinstance(value, list):
        value = tuple(value)
    node[leaf] = value


def config_from_saved(saved: Mapping) -> ml_collections.ConfigDict:
    """A run's saved config (its config.json) over today's defaults. Fields added since it was saved
    take their defaults, which keep the earlier behaviour (e.g. `rollout.turns_left` off); a field
    unknown today is a ConfigError naming it."""
    config = _base_config()
    for path, value in flatten(saved).items():
        set_field(config, path, value)
    return config


def prepare_config(config: ml_collections.ConfigDict, explicit: Iterable[str] | None = None,
                   num_devices: int | None = None) -> ml_collections.ConfigDict:
    """check -> resolve the method -> check again (the method's values must also be valid)."""
    check_config(config, num_devices)
    resolved = resolve_method(config, explicit)
    check_config(resolved, num_devices)
    return resolved
