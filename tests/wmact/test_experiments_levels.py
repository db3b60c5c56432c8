"""experiments/levels.py: the seeds' spread split into the levels' share and the training's (two-way random
effects without replication), checked against the textbook ANOVA sums of squares and against
experiments/report.py's Welch interval, and its tables on made-up per-level records."""
import math

import numpy as np
import pytest
from scipy import stats

from experiments import levels, report


def anova(y):
    """Two-way ANOVA without replication by its sums of squares: (MS_seed, MS_residual)."""
    s, n = y.shape
    grand, rows, cols = y.mean(), y.mean(1, keepdims=True), y.mean(0, keepdims=True)
    ss_seed = n * ((rows - grand) ** 2).sum()
    ss_resid = ((y - rows - cols + grand) ** 2).sum()
    return ss_seed / (s - 1), ss_resid / ((s - 1) * (n - 1))


def bernoulli(rng, p):
    return (rng.random(p.shape) < p).astype(float)


def test_the_split_is_the_anova_of_seeds_and_levels():
    rng = np.random.default_rng(0)
    y = bernoulli(rng, np.clip(rng.random(64)[None, :] + rng.normal(0, 0.1, (5, 1)), 0, 1) * np.ones((5, 64)))
    c = levels.seed_components(y)
    ms_seed, ms_resid = anova(y)
    assert c["seeds"] == 5 and c["levels"] == 64
    assert c["level_var"] == pytest.approx(ms_resid)
    assert c["seed_var"] == pytest.approx(max(0.0, (ms_seed - ms_resid) / 64))
    assert c["std"] == pytest.approx(np.std(y.mean(1), ddof=1))
    assert c["F"] == pytest.approx(ms_seed / ms_resid)
    assert c["p"] == pytest.approx(stats.f.sf(ms_seed / ms_resid, 4, 4 * 63))
    assert c["level_share"] == pytest.approx(ms_resid / 64 / np.var(y.mean(1), ddof=1))


def test_it_tells_a_training_spread_from_the_level_sample():
    rng = np.random.default_rng(1)
    p = rng.random(2000)  # each level's difficulty, shared by every seed
    same = levels.seed_components(bernoulli(rng, np.tile(p, (6, 1))))  # seeds differ only by chance per level
    assert same["p"] > 0.01 and same["level_share"] > 0.5
    shifted = np.clip(p[None, :] + np.array([-0.1, -0.05, 0, 0.05, 0.1, 0.15])[:, None], 0, 1)
    trained = levels.seed_components(bernoulli(rng, shifted))  # and by a seed effect of std ~0.09
    assert trained["p"] < 1e-6 and trained["level_share"] < 0.05
    assert math.sqrt(trained["seed_var"]) == pytest.approx(0.09, abs=0.03)
    # Identical seeds: no spread at all; a single seed or level: nothing to split.
    flat = levels.seed_components(np.tile(bernoulli(rng, p[:50]), (3, 1)))
    assert flat["std"] == 0 and flat["seed_var"] == 0 and math.isnan(flat["p"])
    assert levels.seed_components(np.ones((1, 10))) is None and levels.seed_components(np.ones((3, 1))) is None


def test_the_projection_at_the_runs_own_size_is_welchs_interval():
    """With the same levels, the projected half-width is report.welch_interval's on the seeds' rates (the
    training's share not clamped); more levels narrow it, never under the training's share alone."""
    rng = np.random.default_rng(2)
    p = rng.random(256)
    a = bernoulli(rng, np.clip(p[None, :] + rng.normal(0, 0.05, (5, 1)), 0, 1) * np.ones((5, 256)))
    b = bernoulli(rng, np.clip(p[None, :] + rng.normal(0, 0.05, (4, 1)), 0, 1) * np.ones((4, 256)))
    ca, cb = levels.seed_components(a), levels.seed_components(b)
    assert ca["seed_var"] > 0 and cb["seed_var"] > 0
    diff, lo, hi = report.welch_interval(list(a.mean(1)), list(b.mean(1)))
    assert levels.projected_half_width(ca, cb, 256) == pytest.approx((hi - lo) / 2)
    widths = [levels.projected_half_width(ca, cb, n) for n in (256, 1024, math.inf)]
    assert widths[0] > widths[1] > widths[2] > 0
    # A side whose training share is 0: more levels still only narrow the interval.
    flat = dict(cb, seed_var=0.0)
    assert levels.projected_half_width(ca, flat, 1024) > levels.projected_half_width(ca, flat, math.inf) > 0


def test_length_bins_cover_every_known_level_once():
    opt = np.array([-1, 3, 3, 3, 4, 5, 5, 6, 7, 8, 9, 12, -1])
    bins = levels.length_bins(opt)
    assert bins[0][0] == 3 and bins[-1][1] == 12 and len(bins) == 3
    hits = [sum(lo <= o <= hi for lo, hi in bins) for o in opt]
    assert hits == [0] + [1] * 11 + [0]
    assert levels.length_bins(np.array([-1, -1])) == []
    assert levels.length_bins(np.array([4, 4, 4])) == [(4, 4)]


def record(rng, p, opt, single=True):
    out = {"greedy": {"solved": bernoulli(rng, p).astype(int).tolist(), "optimal": opt.tolist()}}
    if single:
        out["single_turn"] = {"solved": bernoulli(rng, p * 0.8).astype(int).tolist(), "optimal": opt.tolist()}
    return out


def test_the_section_tables_each_method_against_the_baseline():
    rng = np.random.default_rng(3)
    opt = rng.integers(1, 13, 96)
    p = np.clip(1.1 - opt / 12, 0, 1)  # longer solutions are harder
    per = {"interactive": [record(rng, p, opt) for _ in range(3)],
           "wmact": [record(rng, p, opt) for _ in range(3)],
           "entire_plan": [record(rng, p, opt, single=False) for _ in range(2)],
           "step_penalty": [record(rng, p, opt)]}  # one seed: no spread to split
    text = "\n".join(levels.section_lines(per, ["entire_plan", "interactive", "wmact", "step_penalty"], 96,
                                          "interactive", warm=record(rng, p, opt)))
    split = text.split("Success (greedy, final cap)")[0]
    assert "#### Per level (96 levels, greedy)" in split and "std at 384 levels" in split
    rows = {line.split(" | ")[0][2:]: line for line in split.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "---", "entire_plan", "interactive", "wmact"}
    assert rows["interactive"].endswith("| - |") and rows["wmact"].count(",") == 2
    by_length = text.split("Success (greedy, final cap)")[1].split("Success (greedy, 1 turn)")
    assert "| step_penalty | 1 |" in by_length[0] and "| entire_plan | 2 |" in by_length[0]
    assert "entire_plan" not in by_length[1] and "| wmact | 3 |" in by_length[1]
    assert all(f"| {levels.WARM_START} | 1 |" in part for part in by_length)  # the warm start's row, above
    # The easiest bin is solved more often than the hardest (the made-up difficulty).
    cells = [c.strip() for c in by_length[0].split("| interactive | 3 |")[1].splitlines()[0].split("|")[:-1]]
    assert float(cells[0].split()[0]) > float(cells[-1].split()[0])
    assert levels.section_lines({"wmact": per["wmact"][:1]}, ["wmact"], 96, "interactive") == []


def test_success_at_the_starting_cap_puts_annealed_and_fixed_caps_on_one_budget():
    """greedy_l0 is evaluated where the cap anneals: the starting-cap table takes it there and a fixed-cap
    method's greedy episodes (its starting cap is its final one), names those, leaves out a method whose
    runs have it only in part, and takes the warm start's greedy row (before RL every cap is L_0)."""
    opt = [2, 2, 6, 6]
    full = {"solved": [1, 1, 1, 1], "optimal": opt, "actions": [2, 2, 6, 6], "turns": [1, 1, 2, 2]}
    capped = {"solved": [1, 1, 0, 0], "optimal": opt, "actions": [2, 2, 4, 3], "turns": [1, 1, 2, 2]}
    wmact = [{"greedy": capped, "greedy_l0": full}, {"greedy": capped, "greedy_l0": full}]
    interactive = [{"greedy": {**full, "solved": [1, 0, 1, 0]}}] * 2
    anneal = [{"greedy": capped, "greedy_l0": full}, {"greedy": capped}]  # one run evaluated before greedy_l0
    per = {"wmact": wmact, "interactive": interactive, "anneal": anneal}
    text = "\n".join(levels.section_lines(per, ["interactive", "anneal", "wmact"], 4, "interactive",
                                          warm={"greedy": full}))
    final = text.split("Success (greedy, final cap)")[1].split("Success (greedy, starting cap)")[0]
    start = text.split("Success (greedy, starting cap)")[1].split("Failures (greedy, starting cap)")[0]
    assert "| wmact | 2 | 100.0 ± 0.0 | 0.0 ± 0.0 |" in final and "| anneal | 2 |" in final
    assert "(interactive: a fixed cap, their final cap's episodes)" in start
    assert "| wmact | 2 | 100.0 ± 0.0 | 100.0 ± 0.0 |" in start
    assert "| interactive | 2 | 50.0 ± 0.0 | 50.0 ± 0.0 |" in start and "anneal" not in start
    assert f"| {levels.WARM_START} | 1 | 100.0 | 100.0 |" in start
    # Without any greedy_l0 record there is no starting-cap table (every cap is fixed: it would repeat greedy).
    assert "starting cap" not in "\n".join(levels.section_lines({"interactive": interactive * 2}, ["interactive"],
                                                                 4, "interactive"))


def test_failures_that_stopped_short_of_the_optimal_length():
    """The failure table: of the failed episodes of a bin, those with fewer actions than the optimal
    solution (too short to solve), averaged over the runs that failed there."""
    opt = [2, 2, 6, 6]
    runs = [{"greedy": {"solved": [1, 0, 0, 0], "actions": [2, 9, 3, 12], "optimal": opt}},
            {"greedy": {"solved": [1, 1, 0, 1], "actions": [2, 2, 4, 6], "optimal": opt}}]
    text = "\n".join(levels.section_lines({"wmact": runs}, ["wmact"], 4, "interactive"))
    table = text.split("Failures (greedy, final cap)")[1]
    # N_opt 2: run 0 failed 1 of 2 (9 actions: not short), run 1 none -> 25% failed, 0% short.
    # N_opt 6: run 0 failed both (3 short, 12 not), run 1 one (4, short) -> 75% failed, (50 + 100) / 2 short,
    # (7.5 + 4) / 2 actions. No turns recorded: no turns shown.
    assert "| wmact | 2 | 25.0% failed (0.0% short; 9.0 actions) | 75.0% failed (75.0% short; 5.8 actions) |" in table
    no_actions = [{"greedy": {k: v for k, v in r["greedy"].items() if k != "actions"}} for r in runs]
    assert "Failures" not in "\n".join(levels.section_lines({"wmact": no_actions}, ["wmact"], 4, "interactive"))
