"""The transcript analysis behind the account of greedy failures in docs/EXPERIMENTS.md (experiments/probes.py)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from experiments.probes import levels_cap, loops  # noqa: E402
from wmact_jax import prompts  # noqa: E402

A, B, C = "+--+\n|T:|\n+--+", "+--+\n|:T|\n+--+", "+--+\n|F:|\n+--+"


def _episode(states, answers):
    """A conversation in the chat format: the first state, then per answer its feedback's state."""
    text = f"<|im_start|>user\n{prompts.state_message(states[0], 3)}<|im_end|>\n"
    for t, actions in enumerate(answers):
        text += f"<|im_start|>assistant\n{prompts.answer_text(actions)}<|im_end|>\n"
        if t + 1 < len(states):
            text += f"<|im_start|>user\n{prompts.feedback_message(-1.0, states[t + 1], True, 2)}<|im_end|>\n"
    return text


def test_loops_tells_a_repeated_no_op_answer_from_a_cycle_and_from_progress():
    # The same answer again from the state it left unchanged: stuck (and a state shown twice).
    assert loops(_episode([A, A, A], [["East", "West"], ["East", "West"]])) == (True, True)
    # Left unchanged, but a different answer next: not stuck; the state is still shown twice.
    assert loops(_episode([A, A, B], [["East", "West"], ["East"]])) == (False, True)
    # A cycle of two turns: A -> B -> A.
    assert loops(_episode([A, B, A], [["East"], ["West"]])) == (False, True)
    # Progress every turn: neither.
    assert loops(_episode([A, B, C], [["East"], ["Pickup"]])) == (False, False)


def test_levels_cap_defaults_to_the_policy_s_own_cap_and_rejects_caps_outside_the_bound():
    assert levels_cap(None, 6, 10) == 6  # an annealed run evaluated where its training ended
    assert levels_cap(None, 12, 10) == 10  # never past the static bound the rollout was traced with
    assert levels_cap(3, 6, 10) == 3
    for bad in (0, 11):
        with pytest.raises(SystemExit, match="--cap: .* outside 1..10"):
            levels_cap(bad, 6, 10)
