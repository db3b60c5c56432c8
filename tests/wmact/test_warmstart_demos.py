"""Warm-start demonstrations: what each chunk style writes, replayed against the oracle."""

import re

import jax
import pytest

from configs import default
from wmact_jax import config_check
from wmact_jax.train import Trainer
from wmact_jax.warmstart import demo_level_keys, make_demos

ANSWER = re.compile(r"<answer>(.*?)</answer>")


@pytest.fixture(scope="module")
def trainer():
    c = default.get_config()
    c.env.name = "Maze-7x7"
    c.model.hidden_size, c.model.intermediate_size, c.model.num_layers = 32, 64, 1
    c.model.num_heads, c.model.num_kv_heads = 2, 1
    c.rollout.system_prompt = "minimal"
    c.rollout.max_actions_per_turn, c.rollout.max_turn_tokens, c.rollout.max_actions = 6, 24, 24
    c.anneal.l0 = 4
    return Trainer(config_check.prepare_config(c, explicit=()))


def _answers(trainer, ids):
    text = trainer.tokenizer.decode(ids, skip_special_tokens=False)
    return [a.split(" || ") for a in ANSWER.findall(text)]


def test_plan_chunks_give_the_whole_remaining_plan(trainer):
    from envs_jax.oracles import optimal_actions

    toks, _, stats = make_demos(trainer, 24, seed=0, max_turns=4, max_actions_per_turn=6, plan_fraction=1.0,
                                noise=0.0, chunk="plan")
    assert stats["kept"] == len(toks) > 0
    keys = demo_level_keys(seed=0, level_offset=0, num_levels=24)
    _, states = jax.vmap(trainer.env.reset_env, in_axes=(0, None))(keys, trainer.env_params)
    lens = [len(optimal_actions(trainer.env, jax.tree.map(lambda x: x[i], states), trainer.env_params))
            for i in range(24)]
    # Without detours the first answer is the optimal plan, cut at K = 6; then the rest of it.
    first = [len(_answers(trainer, t)[0]) for t in toks]
    assert first == [min(n, 6) for n in lens if n > 0][: len(first)]
    assert all(len(a) <= 6 for t in toks for a in _answers(trainer, t))


def test_plan_actions_cap_each_turn_and_the_turns_replay_the_plan(trainer):
    full, _, _ = make_demos(trainer, 24, seed=0, max_turns=8, max_actions_per_turn=6, plan_fraction=1.0,
                            noise=0.0, chunk="plan")
    short, _, _ = make_demos(trainer, 24, seed=0, max_turns=8, max_actions_per_turn=6, plan_fraction=1.0,
                             noise=0.0, chunk="plan", plan_actions=2)
    assert len(short) == len(full) > 0
    for a, b in zip(full, short):
        turns_a, turns_b = _answers(trainer, a), _answers(trainer, b)
        moves = [m for t in turns_b for m in t]
        assert moves == [m for t in turns_a for m in t]  # the same optimal plan, in turns of 2
        assert all(len(t) == 2 for t in turns_b[:-1]) and 1 <= len(turns_b[-1]) <= 2
        assert len(turns_b) == -(-len(moves) // 2)


def test_random_chunks_and_single_actions(trainer):
    toks, _, _ = make_demos(trainer, 24, seed=0, max_turns=4, max_actions_per_turn=6, plan_fraction=0.0,
                            noise=0.0, chunk="plan", keep_unsolved=True)
    assert all(len(a) == 1 for t in toks for a in _answers(trainer, t))  # one action per turn
    assert len(toks) == 24  # levels longer than 4 moves are kept (cut by the turn cap), not dropped
    dropped, _, stats = make_demos(trainer, 24, seed=0, max_turns=4, max_actions_per_turn=6, plan_fraction=0.0,
                                   noise=0.0, keep_unsolved=False)
    assert len(dropped) == 24 - stats["unsolved"] < 24
    rnd, _, _ = make_demos(trainer, 24, seed=0, max_turns=4, max_actions_per_turn=6, plan_fraction=1.0,
                           noise=0.0, chunk="random")
    assert any(len(_answers(trainer, t)[0]) < 6 and len(_answers(trainer, t)) > 1 for t in rnd)
    with pytest.raises(ValueError, match="chunk"):
        make_demos(trainer, 2, seed=0, max_turns=4, max_actions_per_turn=6, plan_fraction=1.0, noise=0.0,
                   chunk="bogus")


def test_detours_are_one_random_move_then_the_whole_new_plan(trainer):
    # A detour used to overwrite the chunk style (every later plan demo became a random prefix) and
    # replay the previous answer instead of one random move; a detour on the first turn crashed.
    toks, _, stats = make_demos(trainer, 24, seed=0, max_turns=8, max_actions_per_turn=24, plan_fraction=1.0,
                                noise=0.5, chunk="plan")
    assert stats["kept"] == len(toks) == 24 - stats["unsolved"] - stats["too_long"] > 0
    answers = [_answers(trainer, t) for t in toks]
    assert any(len(a) > 1 for a in answers)  # some demos took detours
    # Every answer but the last is a one-move detour: the first plan answer (the whole re-planned
    # path, K = 24 holds any of them) solves the level.
    assert all(len(x) == 1 for a in answers for x in a[:-1])


def test_feedback_is_marked_for_the_state_loss_and_windows_have_none(trainer):
    from wmact_jax.warmstart import FEEDBACK

    toks, masks, stats = make_demos(trainer, 12, seed=1, max_turns=4, max_actions_per_turn=6, plan_fraction=0.0,
                                    noise=0.0, keep_unsolved=True, windows=True)
    assert stats["windows"] > 0 and len(toks) == 12 + stats["windows"]
    for t, m in zip(toks, masks):
        assert len(t) == len(m) and set(m) <= {0, 1, FEEDBACK}
        turns = len(_answers(trainer, t))
        first_answer = m.index(1)
        assert FEEDBACK not in m[:first_answer]  # the system prompt and the first state are never predicted
        # In a demo every answer is followed by the environment's feedback (the last: the final state);
        # a window is one answer alone, with none.
        runs = sum(1 for i in range(1, len(m)) if m[i] == FEEDBACK and m[i - 1] != FEEDBACK)
        assert runs == turns or (runs == 0 and turns == 1)
    assert sum(FEEDBACK not in m for m in masks) == stats["windows"]



def test_recoveries_are_blocked_moves_kept_out_of_the_loss(trainer):
    """recover: some turns are a move that changes nothing (into a wall), not trained on, then the
    oracle's move from the same state; replayed on the environment."""
    import numpy as np

    from envs_jax.oracles import optimal_actions

    toks, masks, stats = make_demos(trainer, 16, seed=0, max_turns=5, max_actions_per_turn=6, plan_fraction=0.0,
                                    noise=0.0, keep_unsolved=True, recover=0.5)
    assert stats["recoveries"] > 0 and stats["too_long"] == 0 and len(toks) == 16
    env, ep = trainer.env, trainer.env_params
    _, states = jax.vmap(env.reset_env, in_axes=(0, None))(demo_level_keys(0, 0, 16), ep)
    open_id = trainer.tokenizer.convert_tokens_to_ids("<answer>")
    names = list(env.action_names)
    blocked = 0
    for i, (t, m) in enumerate(zip(toks, masks)):
        state = jax.tree.map(lambda x: x[i], states)
        starts = [j for j, x in enumerate(t) if x == open_id]
        answers = _answers(trainer, t)
        assert len(starts) == len(answers)
        for j, (pos, moves) in enumerate(zip(starts, answers)):
            before = np.asarray(env.render_glyphs(state))
            for name in moves:
                _, state, _, _, _ = env.step_env(jax.random.PRNGKey(0), state, names.index(name), ep)
            if m[pos] == 0:  # a recovery: one blocked move, then the oracle's move
                blocked += 1
                assert len(moves) == 1 and j + 1 < len(answers)
                np.testing.assert_array_equal(np.asarray(env.render_glyphs(state)), before)
                assert names.index(answers[j + 1][0]) == optimal_actions(env, state, ep)[0]
                assert m[starts[j + 1]] == 1
    assert blocked == stats["recoveries"]
    # Off by default: the same call without recover writes no blocked turn and no masked answer.
    toks0, masks0, stats0 = make_demos(trainer, 16, seed=0, max_turns=5, max_actions_per_turn=6, plan_fraction=0.0,
                                       noise=0.0, keep_unsolved=True)
    assert stats0["recoveries"] == 0
    for t, m in zip(toks0, masks0):
        assert all(m[j] == 1 for j, x in enumerate(t) if x == open_id)


def test_turns_left_counts_down_from_a_cap_the_demo_fits_and_leaves_the_play_unchanged(trainer):
    """A conversation stating the turns left: each demo shows a cap >= its turns, one less each turn
    (windows: the count left at that turn); the moves are those of the same demos without the count."""
    import copy
    import dataclasses

    from wmact_jax.conversation import Conversation

    trainer = copy.copy(trainer)  # room for every demo either way (the count makes some longer)
    trainer.rollout_cfg = dataclasses.replace(trainer.rollout_cfg, context_len=4096)
    conv = Conversation(trainer.env, trainer.tokenizer, trainer.grid_codec, 6, style="minimal", turns_left=True,
                        max_turns=8)
    kw = dict(seed=0, max_turns=8, max_actions_per_turn=6, plan_fraction=0.5, noise=0.1, chunk="plan",
              plan_actions=2, windows=True)
    plain, _, _ = make_demos(trainer, 24, **kw)
    shown, _, stats = make_demos(trainer, 24, conv=conv, **kw)
    assert len(shown) == len(plain) and stats["windows"] > 0
    caps = set()
    for a, b in zip(plain, shown):
        assert _answers(trainer, a) == _answers(trainer, b)
        text = trainer.tokenizer.decode(b, skip_special_tokens=False)
        counts = [int(n) for n in re.findall(r"Turns left: (\d+)\n", text)]
        turns = len(_answers(trainer, b))
        # A demo ends with the state its last answer led to (count cap - turns >= 0); a window has one grid.
        assert len(counts) in (turns, turns + 1) and counts == list(range(counts[0], counts[0] - len(counts), -1))
        assert turns <= counts[0] <= 8 and counts[-1] >= 0
        caps.add(counts[0])
    assert len(caps) > 3  # the cap is drawn, not fixed


def test_budget_aware_demos_finish_the_plan_when_one_turn_is_left(trainer):
    """budget_aware: the cap is drawn from 1..max_turns before the demo plays; turns with more than one
    left write plan chunks (<= plan_actions), the turn with one left the whole rest, and every demo solves
    its level within its cap."""
    import copy
    import dataclasses

    from wmact_jax.conversation import Conversation

    trainer = copy.copy(trainer)
    trainer.rollout_cfg = dataclasses.replace(trainer.rollout_cfg, context_len=4096)
    conv = Conversation(trainer.env, trainer.tokenizer, trainer.grid_codec, 14, style="minimal", turns_left=True,
                        max_turns=8)
    toks, _, stats = make_demos(trainer, 32, seed=0, max_turns=8, max_actions_per_turn=14, plan_fraction=1.0,
                                noise=0.1, chunk="plan", plan_actions=2, conv=conv, budget_aware=True)
    assert stats["unsolved"] == 0 and stats["kept"] == len(toks) == 32  # every demo fits its cap
    caps, long_last = set(), 0
    for t in toks:
        text = trainer.tokenizer.decode(t, skip_special_tokens=False)
        counts = [int(n) for n in re.findall(r"Turns left: (\d+)\n", text)]
        answers = _answers(trainer, t)
        cap = counts[0]
        caps.add(cap)
        assert len(answers) <= cap and counts[: len(answers)] == list(range(cap, cap - len(answers), -1))
        assert all(len(a) <= 2 for a in answers[:-1])  # chunks (or one-move detours) while turns remain
        if len(answers) == cap:  # its last answer was written with one turn left: the whole rest of the plan
            long_last += len(answers[-1]) > 2
    assert min(caps) == 1 and len(caps) > 3 and long_last > 0


def test_warmstart_seed_picks_the_demos_and_defaults_to_the_run_seed(trainer):
    """warmstart.seed replicates a warm start (other demo levels) without touching the run's seed."""
    from wmact_jax.warmstart import all_demos, warmstart_seed

    c = trainer.config
    c.warmstart.num_levels = 8
    assert c.warmstart.seed == -1 and warmstart_seed(c) == c.seed == 0
    base = all_demos(trainer)[0]
    c.warmstart.seed = 1
    try:
        assert warmstart_seed(c) == 1 and c.seed == 0
        other = all_demos(trainer)[0]
        c.warmstart.seed = 0
        assert all_demos(trainer)[0] == base  # an explicit seed equal to the run's gives the same demos
    finally:
        c.warmstart.seed, c.warmstart.num_levels = -1, default.get_config().warmstart.num_levels
    assert other != base


def test_warmstart_init_extends_a_saved_warm_start(trainer, tmp_path):
    """warmstart.init: the warm start trains from a saved warm start's policy, not from a fresh model
    (the config check names a folder that is not one)."""
    import numpy as np

    from wmact_jax.warmstart import initial_params, save_warmstart

    fresh = initial_params(trainer)
    saved = dict(fresh, policy=jax.tree.map(lambda x: x + 0.5, fresh["policy"]))
    save_warmstart(str(tmp_path / "ws"), trainer, saved, {"warmstart/steps": 1.0})
    c = trainer.config
    c.warmstart.init = str(tmp_path / "ws")
    try:
        got = initial_params(trainer)
    finally:
        c.warmstart.init = ""
    flat = lambda p: {jax.tree_util.keystr(k): np.asarray(v) for k, v in
                      jax.tree_util.tree_leaves_with_path(p["policy"].to_pure_dict())}
    want, have, before = flat(saved), flat(got), flat(fresh)
    assert all(np.allclose(have[k], want[k]) for k in want if "value_head" not in k)
    assert not all(np.allclose(have[k], before[k]) for k in want if "value_head" not in k)
    bad = default.get_config()
    bad.warmstart.init = str(tmp_path)
    with pytest.raises(config_check.ConfigError, match="warmstart.init"):
        config_check.prepare_config(bad, explicit=())
