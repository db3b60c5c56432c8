"""config_check: unknown fields with hints, types and ranges, method presets, every preset valid."""
import importlib
import os

import ml_collections
import pytest

from configs import base
from wmact_jax import config_check as cc
from wmact_jax.config_check import ConfigError, check_config, prepare_config, resolve_method

PRESETS = ("default", "sokoban_scratch", "sokoban_smollm2", "maze_scratch", "maze_smollm2",
           "taxi_scratch", "taxi_smollm2")


def _err(config, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(config, **kw)
    return str(e.value)


def test_base_is_valid():
    check_config(base.get_config())


@pytest.mark.parametrize("name", PRESETS)
def test_presets_valid_and_start_from_base(name):
    mod = importlib.import_module(f"configs.{name}")
    c = mod.get_config()
    assert set(cc.flatten(c)) == set(cc.flatten(base.get_config()))
    prepare_config(c)


def test_preset_kinds():
    import configs.maze_smollm2 as m
    import configs.taxi_scratch as t
    c = m.get_config()
    assert c.model.source == "pretrained" and c.model.path == "smollm2-135m-instruct"
    assert c.rollout.context_len > base.get_config().rollout.context_len
    assert t.get_config().env.name == "Taxi-v3" and t.get_config().model.source == "scratch"


def test_unknown_field_names_closest():
    c = base.get_config()
    c.ppo.lrr = 1e-4
    msg = _err(c)
    assert "unknown field 'ppo.lrr'" in msg and "did you mean 'ppo.lr'" in msg
    c = base.get_config()
    c.unlock()
    c.ppoo = {"lr": 1.0}
    msg = _err(c)
    assert "'ppoo.lr'" in msg and "'ppo.lr'" in msg


def test_unknown_and_value_errors_reported_together():
    c = base.get_config()
    c.ppo.clip_lo = 0.1
    c.method = "wmcat"
    msg = _err(c)
    assert "ppo.clip_lo" in msg and "ppo.clip_low" in msg
    assert "'method'" in msg and "did you mean 'wmact'" in msg


def test_types():
    # ConfigDict is type-safe on assignment, but a config file may build its dict by hand.
    d = base.get_config().to_dict()
    d["rollout"]["levels_per_iteration"] = 2.5
    d["ppo"]["normalise_advantages"] = 1
    msg = _err(ml_collections.ConfigDict(d))
    assert "rollout.levels_per_iteration' must be a int" in msg
    assert "ppo.normalise_advantages' must be a bool" in msg
    c = base.get_config()
    c.ppo.lr = 1  # ints are fine where floats are expected
    check_config(c)


@pytest.mark.parametrize("path,value,needle", [
    ("ppo.lam", 0.0, "ppo.lam"),
    ("ppo.lam", 1.5, "ppo.lam"),
    ("ppo.clip_low", 0.0, "ppo.clip_low"),
    ("ppo.gamma", 1.1, "ppo.gamma"),
    ("ppo.lr", -1e-3, "ppo.lr"),
    ("ppo.critic_lr", -1e-3, "ppo.critic_lr"),
    ("model.critic", "detached", "model.critic"),
    ("rollout.group_size", 0, "rollout.group_size"),
    ("ppo.minibatches", 5, "divisible by 'ppo.minibatches'"),
    ("rollout.top_p", 0.0, "rollout.top_p"),
    ("anneal.kind", "cosine", "anneal.kind"),
    ("anneal.floor", 0, "anneal.floor"),
    ("model.num_heads", 3, "divisible"),
    ("reward.placement", "step", "reward.placement"),
    ("env.name", "Sokoban-standard", "did you mean 'Sokoban-Standard'"),
    ("env.eval_names", ("Maze-99x99",), "env.eval_names"),
    ("model.source", "pretrained", "model.path' is required"),
    ("mesh.data", 0, "mesh.data"),
    ("distributed.coordinator", "localhost", "host:port"),
    ("rollout.max_actions_per_turn", 100, "max_actions_per_turn"),
    ("warmstart.budget_aware", True, "set rollout.turns_left=True"),
    ("warmstart.seed", -2, "warmstart.seed"),
    ("reward.revisit_penalty", -0.1, "reward.revisit_penalty"),
    ("model.logits_chunk", -8, "model.logits_chunk"),
    ("model.mlp_chunk", -1, "model.mlp_chunk"),
])
def test_values(path, value, needle):
    c = base.get_config()
    section, field = path.split(".")
    c[section][field] = value
    assert needle in _err(c)


def test_grpo_needs_groups():
    c = base.get_config()
    c.ppo.advantage = "grpo"
    c.rollout.group_size = 1
    c.ppo.minibatches = 1
    assert "group_size" in _err(c)


def test_mesh_against_devices():
    c = base.get_config()
    check_config(c, num_devices=8)
    c.mesh.tp = 3
    assert "devices" in _err(c, num_devices=8)
    c = base.get_config()
    c.rollout.levels_per_iteration = 3
    c.rollout.group_size = 1
    c.ppo.minibatches = 1
    assert "data-parallel" in _err(c, num_devices=2)


def test_all_errors_listed():
    c = base.get_config()
    c.ppo.lam = 0.0
    c.ppo.clip_high = -1.0
    msg = _err(c)
    assert "2 problems" in msg and "ppo.lam" in msg and "ppo.clip_high" in msg


@pytest.mark.parametrize("method,expect", [
    ("entire_plan", dict(kind="fixed", l0=1, rescale=False, penalty=0.0, k=40)),
    ("interactive", dict(kind="fixed", l0=8, rescale=False, penalty=0.0, k=6)),
    ("rescale", dict(kind="fixed", l0=8, rescale=True, penalty=0.0, k=6)),
    ("anneal", dict(kind="wmact", l0=8, rescale=False, penalty=0.0, k=6)),
    ("wmact", dict(kind="wmact", l0=8, rescale=True, penalty=0.0, k=6)),
    ("step_penalty", dict(kind="fixed", l0=8, rescale=True, penalty=0.1, k=6)),
])
def test_methods(method, expect):
    c = base.get_config()
    c.method = method
    r = resolve_method(c)
    got = dict(kind=r.anneal.kind, l0=r.anneal.l0, rescale=r.reward.rescale,
               penalty=r.reward.step_penalty, k=r.rollout.max_actions_per_turn)
    assert got == expect
    if method == "step_penalty":
        assert r.reward.step_penalty_unit == "turn"
    assert resolve_method(r).to_dict() == r.to_dict()  # idempotent
    assert c.anneal.kind == "wmact"  # the input is not modified
    prepare_config(c)


def test_method_respects_explicit_overrides():
    c = base.get_config()
    c.method = "interactive"
    c.anneal.l0 = 12  # differs from base: a user choice, kept
    r = resolve_method(c)
    assert r.anneal.l0 == 12 and r.anneal.kind == "fixed"
    # Same value as base but named on the command line: kept too.
    r = resolve_method(c, explicit={"reward.rescale", "anneal.kind"})
    assert r.reward.rescale is True and r.anneal.kind == "wmact"
    c = base.get_config()
    c.method = "entire_plan"
    c.rollout.max_actions = 20
    assert resolve_method(c).rollout.max_actions_per_turn == 20
    # A preset's per-turn budget does not cap entire_plan's single answer; the command line still wins.
    c.rollout.max_actions_per_turn, c.anneal.l0 = 4, 6
    r = resolve_method(c)
    assert (r.rollout.max_actions_per_turn, r.anneal.l0) == (20, 1)
    assert resolve_method(c, explicit={"rollout.max_actions_per_turn"}).rollout.max_actions_per_turn == 4


def test_unknown_method():
    c = base.get_config()
    c.method = "wmcat"
    with pytest.raises(ConfigError, match="wmact"):
        prepare_config(c)


def test_base_importable_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_config(base.get_config())
    assert os.getcwd() == str(tmp_path)


def test_differences_of_nested_and_flat_configs():
    """One diff for the checkpoint's nested configs and the runner's flat dotted settings."""
    from wmact_jax.config_check import ABSENT, differences

    a = {"ppo": {"lr": 1e-4, "epochs": 2}, "seed": 0}
    b = {"ppo": {"lr": 3e-4, "epochs": 2}, "env": {"name": "Maze-5x5"}, "seed": 0}
    assert differences(a, b) == [("env.name", ABSENT, "Maze-5x5"), ("ppo.lr", 1e-4, 3e-4)]
    assert differences({"ppo.lr": 1e-4}, {"ppo.lr": 1e-4}) == []
    assert differences({"anneal.rounding": "ceil"}, {}) == [("anneal.rounding", "ceil", ABSENT)]


def test_config_from_saved_fills_new_fields_and_names_unknown_ones():
    """A config.json saved before a field existed loads with that field's default; a field unknown
    today is an error naming it."""
    from configs import default
    from wmact_jax.checkpointing import config_to_dict
    from wmact_jax.config_check import ConfigError, config_from_saved

    saved = config_to_dict(default.get_config())
    saved["ppo"]["lr"] = 3e-4
    del saved["rollout"]["turns_left"]
    c = config_from_saved(saved)
    assert c.ppo.lr == 3e-4 and c.rollout.turns_left is False and c.env.name == default.get_config().env.name
    saved["rollout"]["turn_left"] = True
    with pytest.raises(ConfigError, match="rollout.turn_left"):
        config_from_saved(saved)


def test_tempered_training_excludes_top_k_and_top_p():
    """rollout.temperature != 1 trains softmax(logits / T); a top-k / top-p filter would make the tokens
    come from a distribution PPO's ratio does not model."""
    for field, value in (("rollout.top_k", 5), ("rollout.top_p", 0.9)):
        c = base.get_config()
        c.rollout.temperature = 0.5
        c.rollout.__setattr__(field.split(".")[1], value)
        assert "tempered policy" in _err(c)
    c = base.get_config()
    c.rollout.temperature, c.rollout.top_k = 1.0, 5  # untempered: as before
    check_config(c)
