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
