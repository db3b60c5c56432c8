"""The agent's conversation, as text: the single specification of what the model reads and writes.

The in-graph rollout builds exactly these messages as tokens (fixed pieces tokenized once on the
host, grids and rewards by the codecs); the warm start writes transcripts with the same functions,
so supervised and RL data share one format. No observe/predict/plan template is imposed on the
thinking: the format only fixes where the actions go.

    system:    rules of the puzzle, symbol legend, the answer format
    user:      "Current state:\n<grid>"
    assistant: "<think>...</think><answer>Up || Left</answer>"
    user:      "Reward: -0.2\nCurrent state:\n<grid>"       (or "Invalid answer.\n...")
    ...
"""

from __future__ import annotations

from typing import Sequence

ACTION_SEP = " || "
STATE_HEADER = "Current state:\n"
INVALID_TEXT = "Invalid answer: no action was taken.\n"


def system_prompt(env, max_actions_per_turn: int, single_turn: bool = False, compact: bool = False) -> str:
    """Rules + legend + answer format. `single_turn`: the whole plan must fit in one answer.

    `compact` drops the prose rules (legend, actions and format only): a model trained from
    scratch cannot read them, and every prompt token costs compute in each rollout and update.
    """
    actions = ", ".join(env.action_names)
    if single_turn:
        budget = (f"You get a single turn: give the whole plan, up to {max_actions_per_turn} "
                  "actions, in one answer.")
    else:
        budget = (f"Each turn, give up to {max_actions_per_turn} actions; they are executed in order "
                  "and you see the resulting state and reward.")
    rules = f"{env.name}.\n" if compact else f"{env.rules_text.strip()}\n"
    if compact:
        budget = f"Up to {max_actions_per_turn} actions per {'answer' if single_turn else 'turn'}."
    return (
        rules +
        f"Symbols:\n{env.legend_text()}\n"
        f"Actions: {actions}.\n"
        f"{budget}\n"
        "Answer as <think>your reasoning</think><answer>Action || Action</answer>."
    )


def state_message(grid_text: str) -> str:
    return STATE_HEADER + grid_text


def reward_text(reward: float) -> str:
    """One decimal, '-0.0' printed as '0.0' (the in-graph number codec follows the same rule)."""
    r = round(float(reward), 1)
    if r == 0:
        r = 0.0
    return f"Reward: {r:.1f}\n"


def feedback_message(reward: float, grid_text: str, valid: bool) -> str:
    head = reward_text(reward) if valid else INVALID_TEXT
    return head + state_message(grid_text)


def answer_text(actions: Sequence[str], thinking: str = "") -> str:
    return f"<think>{thinking}</think><answer>{ACTION_SEP.join(actions)}</answer>"
