"""The warm start's schedule: the one-action phase (its chance level, its extension until the model
leaves it), the mixed phase's batches by style, and further cycles until a target loss."""

import math
import re

import jax
import numpy as np
import pytest

from configs import default
from wmact_jax import config_check
from wmact_jax.train import Trainer
from wmact_jax.warmstart import ANSWER, FEEDBACK, chance_answer_loss, run_warmstart


def test_chance_level_is_the_answers_entropy_spread_over_their_tokens():
    a, b = ANSWER, FEEDBACK
    # Answers [5, 6, 7] three times and [5, 8, 7] once, 3 tokens each; feedback and prompt tokens ignored.
    toks = [[1, 5, 6, 7, 9, 9, 5, 6, 7], [1, 5, 6, 7, 9, 5, 8, 7]]
    masks = [[0, a, a, a, b, b, a, a, a], [0, a, a, a, b, a, a, a]]
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert chance_answer_loss(toks, masks) == pytest.approx(h * 4 / 12)
    # One answer only: nothing to guess.
    assert chance_answer_loss([[5, 6, 7]], [[a, a, a]]) == 0.0
    assert chance_answer_loss([[1, 2]], [[0, 0]]) == 0.0


def _config(**warm):
    c = default.get_config()
    c.model.hidden_size, c.model.intermediate_size, c.model.num_layers = 32, 64, 1
    c.model.num_heads, c.model.num_kv_heads = 2, 1
    c.warmstart.steps, c.warmstart.num_levels, c.warmstart.batch_size = 20, 24, 8
    c.warmstart.curriculum, c.warmstart.length_bucket = 0.5, 0  # one batch width: fewer compiles
    for k, v in warm.items():
        setattr(c.warmstart, k, v)
    return config_check.prepare_config(c, explicit=())


@pytest.fixture(scope="module")
def trainer():
    return Trainer(_config())


def _warm(trainer, **warm):
    """run_warmstart with these warmstart fields (checked like a run's), on the one trainer."""
    saved = trainer.config.warmstart
    trainer.config.warmstart = _config(**warm).warmstart
    try:
        logs = []
        params, metrics = run_warmstart(trainer, trainer.init_state(jax.random.key(0)).ppo.params, log=logs.append)
    finally:
        trainer.config.warmstart = saved
    return params, metrics, logs


def test_one_action_phase_is_extended_up_to_its_cap_while_on_the_plateau(trainer):
    # 20 steps, the first 10 one-action; an exit threshold no 20-step model reaches: the phase runs to its
    # cap of 40 steps, then the 10 mixed steps follow.
    _, metrics, logs = _warm(trainer, curriculum_exit=0.05, curriculum_max_steps=40)
    assert metrics["warmstart/one_action_steps"] == 40 and metrics["warmstart/steps"] == 50
    assert 0.1 < metrics["warmstart/chance_loss"] < 1.0
    assert metrics["warmstart/one_action_loss"] > 0.05 * metrics["warmstart/chance_loss"]
    ends = [m for m in logs if "one-action phase ends" in m]
    assert len(ends) == 1 and "step 40" in ends[0] and "WARNING" in ends[0]
    assert any("warm start step 50/50" in m for m in logs)


def test_without_room_to_extend_the_phase_the_warm_start_is_the_fixed_one(trainer):
    p_fixed, m_fixed, _ = _warm(trainer)
    p_capped, m_capped, _ = _warm(trainer, curriculum_exit=0.05, curriculum_max_steps=10)
    assert m_fixed["warmstart/steps"] == m_capped["warmstart/steps"] == 20
    assert m_fixed["warmstart/one_action_steps"] == 10
    for x, y in zip(jax.tree.leaves(p_fixed["policy"]), jax.tree.leaves(p_capped["policy"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_curriculum_exit_is_checked():
    with pytest.raises(config_check.ConfigError, match="curriculum_exit"):
        _config(curriculum_exit=1.5)
    with pytest.raises(config_check.ConfigError, match="needs 'warmstart.curriculum' > 0"):
        _config(curriculum=0.0, curriculum_exit=0.8)


def test_cycles_follow_while_the_loss_is_above_the_target(trainer):
    p_fixed, m_fixed, _ = _warm(trainer)
    # A target every 20-step model reaches: one cycle, the fixed warm start exactly.
    p_met, m_met, logs_met = _warm(trainer, target_loss=50.0, max_cycles=3)
    assert m_met["warmstart/cycles"] == 1 and m_met["warmstart/steps"] == 20
    assert "warmstart/cycle1_loss" not in m_met and not any("cycle 2" in m for m in logs_met)
    for x, y in zip(jax.tree.leaves(p_fixed["policy"]), jax.tree.leaves(p_met["policy"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # A target none reaches: cycles up to the cap, each of 20 mixed steps from a fresh schedule.
    p_cap, m_cap, logs = _warm(trainer, target_loss=1e-4, max_cycles=3)
    assert m_cap["warmstart/cycles"] == 3 and m_cap["warmstart/steps"] == 60
    assert m_cap["warmstart/one_action_steps"] == 10  # later cycles are mixed steps only
    losses = [m_cap[f"warmstart/cycle{k}_loss"] for k in (1, 2, 3)]
    assert all(v > 1e-4 for v in losses) and losses[-1] == m_cap["warmstart/loss"]
    assert losses[0] == pytest.approx(m_fixed["warmstart/loss"])  # cycle 1 is the fixed warm start
    restarts = [m for m in logs if "is above warmstart.target_loss=0.0001" in m]
    assert len(restarts) == 2 and "cycle 2 (of at most 3)" in restarts[0] and "cycle 3" in restarts[1]
    assert any("warm start step 60/60" in m for m in logs)
    changed = [not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(p_fixed["policy"]), jax.tree.leaves(p_cap["policy"]))]
    assert any(changed)


def test_target_loss_is_checked():
    with pytest.raises(config_check.ConfigError, match="needs 'warmstart.max_cycles' >= 2"):
        _config(target_loss=0.1)
    with pytest.raises(config_check.ConfigError, match="max_cycles' must be >= 1"):
        _config(max_cycles=0)
    with pytest.raises(config_check.ConfigError, match="target_loss"):
        _config(target_loss=-0.1, max_cycles=2)


def test_the_mixed_phase_can_draw_its_batches_by_style(trainer):
    # 20 steps, the last 10 (one chunk) mixed. Pooled (the default): no split, no split metrics.
    _, m_pooled, logs_pooled = _warm(trainer)
    assert "warmstart/mixed_one_action_chunks" not in m_pooled
    assert not any("batches from one-action demos" in m for m in logs_pooled)
    # share 0 draws the mixed chunk from the multi-action demos, share 1 from the one-action ones.
    _, m_plans, logs = _warm(trainer, mixed_one_action_share=0.0)
    assert any("0% of the batches from one-action demos, 100% from the" in m for m in logs)
    assert m_plans["warmstart/mixed_one_action_chunks"] == 0 and m_plans["warmstart/mixed_chunks"] == 1
    _, m_single, _ = _warm(trainer, mixed_one_action_share=1.0)
    assert m_single["warmstart/mixed_one_action_chunks"] == 1 and m_single["warmstart/mixed_chunks"] == 1
    with pytest.raises(config_check.ConfigError, match="mixed_one_action_share"):
        _config(mixed_one_action_share=1.5)


def test_remat_and_logits_chunk_warm_start_fits_the_same_policy(trainer):
    """model.remat, model.logits_chunk, model.flash_attention and model.mlp_chunk reach the warm start's loss:
    the same 20 steps give the same policy, loss and answer accuracy up to round-off. (remat_attention
    reaches it the same way, `Trainer.forward_options`; test_train.py checks those options reach the update.)"""
    p0, m0, logs = _warm(trainer)
    widths = [int(w) for line in logs for w in re.findall(r"widths (\d+)", line)]
    assert widths and min(widths) > 128, logs  # demos wider than a query tile: the attention is tiled
    m = trainer.config.model
    m.remat, m.logits_chunk, m.flash_attention, m.mlp_chunk = True, 16, True, 64
    try:
        p1, m1, _ = _warm(trainer)
    finally:
        m.remat, m.logits_chunk, m.flash_attention, m.mlp_chunk = False, 0, False, 0
    assert m1["warmstart/token_accuracy"] == pytest.approx(m0["warmstart/token_accuracy"], abs=1e-3)
    assert m1["warmstart/loss"] == pytest.approx(m0["warmstart/loss"], rel=1e-4)
    for x, y in zip(jax.tree.leaves(p0["policy"]), jax.tree.leaves(p1["policy"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)
