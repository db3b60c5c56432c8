"""What the experiment suites train: environments, their transfer targets, methods, seeds, budgets.

Every run of an experiment starts from configs/default.py (the small model from scratch, minimal
prompt), takes the experiment's environment settings, then the suite's budget, then the method.
Scaling to accelerators changes only these numbers (or `--set` overrides), not the runner.
"""

from __future__ import annotations

from configs._scratch import turn_tokens

METHODS = ("entire_plan", "interactive", "rescale", "wmact", "step_penalty")

# Shared by every experiment: the system prompt a model from scratch needs (the puzzle's name and the
# answer budget; prose rules it cannot read would only cost tokens).
COMMON = {"rollout.system_prompt": "minimal"}

# Per environment: the env, where its skill should transfer, and the episode shape on 2 CPU cores.
# K (rollout.max_actions_per_turn) holds a whole optimal plan of the puzzle, so the turn cap can be
# annealed down to one turn; max_turn_tokens holds K actions (turn_tokens(K)). context_len holds the
# prompt and about l0 turns (a turn: <= max_turn_tokens + the feedback grid).
# Maze: 5x5 in the full suite. A 1M-parameter model from scratch learned the 5x5 policy in a
# 10-minute warm start (77% greedy success); on 7x7 a fixed 600-step warm start ends its
# one-action phase (step 300) before the model leaves its plateau (about step 400, measured). The
# results in experiments/results/full/maze7 were run with `--set warmstart.steps=1000` (500 steps of
# one-action play; 29% greedy success after 13.6 minutes; 5 methods x 3 seeds in 89 minutes), before
# the full suite extended that phase by itself (FULL_WARMSTART).
EXPERIMENTS = {
    "maze5": dict(env="Maze-5x5", transfer=("Maze-7x7", "Maze-9x9"), overrides={
        "rollout.context_len": 512, "rollout.max_actions": 16, "rollout.max_actions_per_turn": 8,
        "anneal.l0": 5}),
    "maze7": dict(env="Maze-7x7", transfer=("Maze-9x9", "Maze-11x11"), overrides={
        "rollout.context_len": 640, "rollout.max_actions": 24, "rollout.max_actions_per_turn": 14,
        "anneal.l0": 5}),
    # Sokoban 6x6 also trains from Maze-5x5's warm start (since 2026-12-07): 47.9% greedy success before RL
    # against 10.4% from scratch (experiments/results/sokoban6_from_maze/).
    "sokoban6": dict(env="Sokoban-6x6-1", transfer=(), warmstart_from="maze5", overrides={
        "rollout.context_len": 640, "rollout.max_actions": 20, "rollout.max_actions_per_turn": 10,
        "anneal.l0": 5}),
    # Sokoban-Standard's warm start trains from Maze-5x5's (`warmstart_from`: made first if missing): from
    # scratch its one-action phase stayed at chance through 1500 steps; from the Maze policy, which reads
    # the same glyphs (#, _, P), it left the plateau at step 330 (docs/EXPERIMENTS.md, "Sokoban-Standard").
    # Still 0% greedy success: one action per turn solves at most 6.2% of its held-out levels in 6 turns.
    "sokoban_std": dict(env="Sokoban-Standard", transfer=("Sokoban-Hard-1", "Sokoban-Hard-2"), warmstart_from="maze5",
                        overrides={
        "rollout.context_len": 768, "rollout.max_actions": 30, "rollout.max_actions_per_turn": 16,
        "anneal.l0": 6}),
    "taxi": dict(env="Taxi-v3", transfer=("Taxi-7x7",), overrides={
        # Taxi's map is 83 tokens (one per glyph; 153 before its codec checked real grids): long turns.
        # 40 actions (optimal plans are up to 18; configs/taxi_scratch.py has 40): at 20 the plan warm start's
        # greedy episodes ended on the action cap 88% of the time (2026-12-05).
        "rollout.context_len": 1664, "rollout.max_actions": 40, "anneal.l0": 3,
        "rollout.max_actions_per_turn": 18}),
}


# entire_plan writes the whole plan in one answer: room for max_actions actions and the tags.
def entire_plan_overrides(max_actions: int) -> dict:
    return {"rollout.max_turn_tokens": turn_tokens(max_actions)}


# The warm start every experiment shares (measured on Maze-5x5 in `make run`: 83% greedy success after
# 600 steps, 6 minutes on 2 cores): one-action play first (the curriculum: 300 steps, lr 1e-3, the
# model leaves its plateau after 150-250; experiments/probes.py plateau), then mixed with multi-action
# plans (30% of the levels) and one-turn whole plans (20%, so that entire_plan starts from a policy
# that knows its format too), 5% detour moves for RL to improve on.
WARMSTART = {"warmstart.steps": 600, "warmstart.batch_size": 32, "warmstart.num_levels": 3000,
             "warmstart.lr": 1e-3, "warmstart.noise": 0.05, "warmstart.plan_fraction": 0.3,
             "warmstart.curriculum": 0.5}
WARMSTART_SINGLE_TURN_FRACTION = 0.2
# The full suite's puzzles leave the one-action plateau at different steps (Maze-5x5: 150-250; Maze-7x7:
# about 400, measured): its one-action phase runs past step 300 until the answer loss is below 0.9 x
# chance (at most 1500 steps), then the 300 mixed steps follow. The quick suite keeps the fixed
# 300 steps (Maze-5x5 at lr 1e-3 is at 0.62-0.65 x chance by then) and its time budget.
FULL_WARMSTART = {"warmstart.curriculum_exit": 0.9, "warmstart.curriculum_max_steps": 1500}

# RL: 32 episodes per iteration (8 levels x 4), PPO with GAE at lr 1e-4 (the critic: base.py's default, a
# separate critic at critic_lr 1e-3 since 2026-12-03; the results of 2026-12-02 had a shared value head). Measured on the maze5 warm
# start (interactive, 30 iterations): lr 1e-4 kept approx_kl <= 1e-3 and raised sampled success
# 65 -> 73% (greedy unchanged); 5e-4 with 16 episodes lowered greedy success 77 -> 67%; GRPO
# advantages at 1e-4 did no better (greedy 77 -> 71%).
# Evaluated: greedy and sampled at the run's own (final) cap, greedy with one turn, and greedy at the
# starting cap L_0 for the methods whose cap anneals (`greedy_l0`, since 2026-12-06: the budget the
# baselines keep, so that annealed and fixed caps are also compared on one budget; a fixed-cap method's
# greedy success is that number already). Evaluation settings only: seeds added to a folder made
# without it still join it (run.EVALUATION_ONLY).
RL = {"rollout.levels_per_iteration": 8, "rollout.group_size": 4, "ppo.lr": 1e-4, "ppo.minibatches": 2,
      "train.eval_modes": ("greedy", "sampled", "single_turn", "greedy_l0"), "train.transcripts": 2}

QUICK = {**WARMSTART, **RL, "train.iterations": 10, "train.eval_levels": 48, "train.eval_every": 0,
         "train.checkpoint_every": 10, "anneal.tau": 2, "model.critic": "head", "env.eval_names": ()}

# Taxi-v3's recipe (experiments/results/taxi_plan_warmstart_extended, 2026-12-05: greedy success 87.5% after
# the warm start; 73.6 +- 8.7% WMAct, 44.4 +- 7.3% PPO-EntirePlan over 3 seeds). The warm start writes plans
# three moves per turn with no one-action share in the mix, after a one-action phase that lasts until
# the model leaves its plateau; 1200 steps of it reach 8.3% greedy, and 1200 more plan-only steps from
# that policy (a second stage, a fresh schedule) 87.5%. The prompt states the turns left; RL runs 100
# iterations from a cap of 10 turns. On the quick suite's budget per iteration (its value head, no
# transfer evaluation), as the published runs were made: ~66 minutes of warm start and ~24 minutes
# per multi-turn run on 2 CPU cores. Not robust as a fixed step count: the same settings on later code
# (float round-off only) gave a warm start that solves 4.2% (experiments/results/taxi_suite_rerun). So the
# second stage now goes on, cycle by cycle (a fresh optimizer and schedule each, what a third stage did
# by hand: 4.2% -> 47.9% -> 95.8%), while its answer loss is above 0.12, for at most 3 cycles of 1200
# steps (~2 hours of warm start then); the published draw ended its second stage at 0.09 and would have
# run as it did.
TAXI_PLAN = {"warmstart.mixed_one_action_share": 0.0, "warmstart.plan_actions": 3, "warmstart.steps": 1200,
             "warmstart.curriculum": 0.25, "warmstart.curriculum_exit": 0.9, "warmstart.curriculum_max_steps": 1500,
             "rollout.turns_left": True, "anneal.l0": 10, "anneal.tau": 10, "train.iterations": 100,
             "train.eval_every": 25}

TAXI_STAGE2 = {"warmstart.curriculum": 0.0, "warmstart.curriculum_exit": 0.0, "warmstart.target_loss": 0.12,
               "warmstart.max_cycles": 3}

# The curves and the first table evaluate 48 levels; each run's final policy (and the warm start, in each
# method's first seed) is also evaluated on 256 (`eval_256.json`, the tables' "Re-evaluated" section): on
# 48 levels the methods were not told apart below ~8 points (experiments/results/sokoban6_plan). About a
# minute a Sokoban 6x6 run on 2 CPU cores.
FULL = {**WARMSTART, **FULL_WARMSTART, **RL, "train.iterations": 50, "train.eval_levels": 48,
        "train.final_eval_levels": 256, "train.eval_every": 25, "train.checkpoint_every": 25, "anneal.tau": 5}

# Sokoban 6x6 with plans as the warm start's habit (experiments/results/sokoban6_plan, 2026-12-07): the
# suite's warm start (one action a turn, trained from Maze-5x5's: 47.9% greedy), then a second stage of
# 600 steps on plans of up to 3 moves a turn only: 95.8% greedy at cap 5 in 1.98 turns before RL, where
# WMAct's cap anneals (5 -> 3). Maze's plan recipe (docs/EXPERIMENTS.md, "with multi-action turns as the
# warm start's habit") as a stage after the one-action policy rather than a longer single warm start.
SOKOBAN6_PLAN_STAGE = {"warmstart.curriculum": 0.0, "warmstart.curriculum_exit": 0.0,
                       "warmstart.mixed_one_action_share": 0.0, "warmstart.plan_actions": 3, "warmstart.steps": 600}

SUITES = {
    # One environment, few iterations: the whole pipeline (warm start + 5 methods x 3 seeds); 14.3 minutes
    # measured on 2 CPU cores on 2026-12-04 (a 5.8-minute warm start, 15 runs of 9-64 s; 19.9 minutes before
    # the methods shared one program and one trainer), 20.5 minutes on 2026-12-07's slower machine (an
    # 8.2-minute warm start, 15 runs in 12.1 minutes), 14.9 minutes later that day on a faster hour with the LM
    # head at the trained tokens only (5.5 + 9.1 minutes; README, "Status and limits").
    # For its time budget it trades the separate critic (a second model: ~2x the update) for a value head
    # on a stop-gradient of the trunk ("head": it cannot disturb the policy, but barely learns), and skips
    # the transfer evaluations.
    "quick": dict(experiments=("maze5",), seeds=(0, 1, 2), overrides=QUICK),
    # Every environment: maze5 took 63 minutes on 2 CPU cores (a 15-minute warm start under load, 15 runs in
    # 48 minutes, shared critic), sokoban6 87 minutes (15-minute warm start, separate critic). sokoban_std's
    # warm start (10.5 minutes) did not leave its plateau (0% success; its runs then see no reward: stopped
    # after 2 runs of 2.3 and 7.4 minutes); taxi was not run at this budget.
    "full": dict(experiments=("maze5", "sokoban6", "sokoban_std", "taxi"), seeds=(0, 1, 2), overrides=FULL),
    # Taxi with the published recipe (TAXI_PLAN), one command for what took two: the warm start's
    # second stage (`warmstart_extend`) trains from the first stage's policy, with cycles added while
    # its answer loss is above a target (TAXI_PLAN's comment).
    "taxi": dict(experiments=("taxi",), seeds=(0, 1, 2), overrides={**QUICK, **TAXI_PLAN},
                 warmstart_extend=(TAXI_STAGE2,)),
    # Sokoban 6x6 from the plan warm start (SOKOBAN6_PLAN_STAGE), the full suite's budget: the chain Maze-5x5
    # warm start -> Sokoban 6x6 one-action warm start -> plan stage, then the methods (`warmstart_extend`
    # by experiment: Maze's warm start, the source, keeps its one stage).
    "sokoban6_plan": dict(experiments=("sokoban6",), seeds=(0, 1, 2), overrides=FULL,
                          warmstart_extend={"sokoban6": (SOKOBAN6_PLAN_STAGE,)}),
}
