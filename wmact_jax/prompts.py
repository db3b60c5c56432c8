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

With `turns_left` on, each user message also states the turns the model has left, this one
included ("Turns left: 3\nCurrent state:\n<grid>"): under an annealed cap it is the only way
the policy can know its budget before running out of it.
"""

from __future__ import annotations

from typing import Sequence

ACTION_SEP = " || "
STATE_HEADER = "Current state:\n"
INVALID_TEXT = "Invalid answer: no action was taken.\n"


SYSTEM_STYLES = ("full", "compact", "minimal")


def system_prompt(env, max_actions_per_turn: int, single_turn: bool = False, style: str = "full") -> str:
    """Rules + legend + answer format. `single_turn`: the whole plan must fit in one answer.

    style "full" states the rules in prose; "compact" drops them (legend, actions and format only);
    "minimal" keeps only the puzzle's name and the answer budget. A model trained from scratch reads
    none of the prose, every prompt token costs compute in each rollout and update, and a long constant
    prefix dilutes its early attention: "minimal" roughly halves a first-turn episode on a 7x7 grid.
    """
    if style not in SYSTEM_STYLES:
        raise ValueError(f"system prompt style must be one of {SYSTEM_STYLES}, got {style!r}")
    per = "answer" if single_turn else "turn"
    if style == "minimal":
        return f"{env.name}. Up to {max_actions_per_turn} actions per {per}."
    actions = ", ".join(env.action_names)
    if style == "compact":
        rules = f"{env.name}.\n"
        budget = f"Up to {max_actions_per_turn} actions per {per}."
    elif single_turn:
        rules = f"{env.rules_text.strip()}\n"
        budget = (f"You get a single turn: give the whole plan, up to {max_actions_per_turn} "
                  "actions, in one answer.")
    else:
        rules = f"{env.rules_text.strip()}\n"
        budget = (f"Each turn, give up to {max_actions_per_turn} actions; they are executed in order "
                  "and you see the resulting state and reward.")
    return (
        rules +
        f"Symbols:\n{env.legend_text()}\n"
        f"Actions: {actions}.\n"
        f"{budget}\n"
        "Answer as <think>your reasoning</think><answer>Action || Action</answer>."
    )


def turns_left_text(turns_left: int | None) -> str:
    """'' when the count is not shown (None); else 'Turns left: n\\n'."""
    return "" if turns_left is None else f"Turns left: {int(turns_left)}\n"


def state_message(grid_text: str, turns_left: int | None = None) -> str:
    return turns_left_text(turns_left) + STATE_HEADER + grid_text


def reward_text(reward: float) -> str:
    """One decimal, '-0.0' printed as '0.0' (the in-graph number codec follows the same rule)."""
    r = round(float(reward), 1)
    if r == 0:
        r = 0.0
    return f"Reward: {r:.1f}\n"


def feedback_message(reward: float, grid_text: str, valid: bool, turns_left: int | None = None) -> str:
    head = reward_text(reward) if valid else INVALID_TEXT
    return head + state_message(grid_text, turns_left)


def answer_text(actions: Sequence[str], thinking: str = "") -> str:
    return f"<think>{thinking}</think><answer>{ACTION_SEP.join(actions)}</answer>"
