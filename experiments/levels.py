"""Per-level study of an experiment's runs: where a method's spread over seeds comes from, and which levels
it solves.

    python experiments/levels.py RESULTS/<exp> [RESULTS/<exp2> ...] [--size 256]

Every run of an experiment is scored on the same held-out levels, and `eval_<N>.json` keeps each level's
episode (`levels`, written by `train.final_eval_levels` and experiments/reevaluate.py). For the greedy
success y[seed, level] (0/1) of one method this reads a two-way random-effects model,
y = mu + level + seed + residual, without replication (one episode per seed and level):

- the spread of the seeds' success rates (the std over seeds the tables show) splits into the **level
  sample's** share, the residual variance over the N levels (sigma_e^2 / N: which of these particular
  levels a policy happens to solve) and the **training's**, sigma_seed^2 (policies that differ on levels in
  general). With N levels, var(seed means) = sigma_seed^2 + sigma_e^2 / N; the residual mean square
  estimates sigma_e^2 and an F test (seed mean square over residual) asks whether the seeds differ beyond
  what the levels explain;
- from them, the spread and the Welch half-width against the baseline that more levels would give: more
  levels shrink only the level share, so when the training share dominates only more seeds help;
- agreement: the levels every seed solves, that none solves;
- (the CLI) every run's metrics of eval_<N>.json, per-level records or not, against the baseline;
- success by the level's difficulty, the oracle's optimal solution length (bins of about equal size), and
  how the failures ended: how many stopped with fewer actions than the optimal solution (too short to
  solve: a plan cut off, or turns run out) rather than wandering; at the final cap, at the starting cap L_0
  (`greedy_l0`, where the cap anneals: what an annealed policy does with the baselines' budget) and in one
  turn.

experiments/report.py adds these tables under each re-evaluated table of table.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The tables' success columns that have a per-level study. greedy_l0 (greedy at the starting cap L_0, evaluated
# where the cap anneals) puts every method on the baselines' budget: is what an annealed policy loses its
# skill or its turns?
MODES = ("greedy", "greedy_l0", "single_turn")
LABELS = {"greedy": "greedy, final cap", "greedy_l0": "greedy, starting cap", "single_turn": "greedy, 1 turn"}
WARM_START = "*warm start (before RL)*"


def seed_components(y: np.ndarray) -> dict | None:
    """The variance split of y [seeds, levels] (0/1 or rates): {seeds, levels, std (of the seed means),
    level_var (sigma_e^2, per level), seed_var (sigma_seed^2, clamped at 0), level_share (of var(seed
    means)), F, p}. None with fewer than 2 seeds or 2 levels."""
    y = np.asarray(y, np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        return None
    s, n = y.shape
    v = float(np.var(y.mean(1), ddof=1))  # var of the seed means
    w = float(np.var(y, axis=0, ddof=1).mean())  # mean over levels of the variance over seeds
    resid = max(0.0, (w - v) * n / (n - 1))  # residual mean square: E = sigma_e^2
    seed_var = v - resid / n  # E[var of seed means] = sigma_seed^2 + sigma_e^2 / n
    out = {"seeds": s, "levels": n, "std": math.sqrt(v), "level_var": resid, "seed_var": max(0.0, seed_var),
           "level_share": (resid / n) / v if v > 0 else float("nan"), "F": float("nan"), "p": float("nan")}
    if resid > 0:
        from scipy.stats import f as f_dist

        out["F"] = n * v / resid
        out["p"] = float(f_dist.sf(out["F"], s - 1, (s - 1) * (n - 1)))
    return out


def projected_var(comp: dict, levels: float) -> float:
    """The variance of one seed's success rate on `levels` levels (inf: the training's share alone)."""
    return comp["seed_var"] + (0.0 if math.isinf(levels) else comp["level_var"] / levels)


def projected_half_width(a: dict, b: dict, levels: float, level: float = 0.95) -> float:
    """The Welch half-width of mean(a) - mean(b) with the same seeds scored on `levels` levels: the
    projected variances, the t quantile at the Welch df of the variances seen (a df from the projected
    ones would jump where a side's training share is 0)."""
    from scipy.stats import t

    from experiments.report import welch_df  # report imports this module: not at the top

    va, vb = projected_var(a, levels) / a["seeds"], projected_var(b, levels) / b["seeds"]
    df = welch_df(a["std"] ** 2 / a["seeds"], b["std"] ** 2 / b["seeds"], a["seeds"], b["seeds"])

    return float(t.ppf(0.5 + level / 2, df)) * math.sqrt(va + vb)


def length_bins(optimal: np.ndarray, count: int = 3) -> list[tuple[int, int]]:
    """[(lo, hi)] inclusive ranges of optimal lengths in about `count` bins of equal size (levels without
    an optimal length, -1, are in none)."""
    known = np.sort(optimal[optimal >= 0])
    if known.size == 0:
        return []
    edges = sorted({int(np.quantile(known, q, method="lower")) for q in np.linspace(0, 1, count + 1)[1:-1]})
    bins, lo = [], int(known[0])
    for e in edges + [int(known[-1])]:
        if e >= lo:
            bins.append((lo, e))
            lo = e + 1
    return bins


def stack(runs: list[dict], mode: str, field: str = "solved") -> np.ndarray | None:
    """[seeds, levels] of one per-level field over a method's runs (None if a run lacks the mode or the
    runs disagree on the level count)."""
    rows = [r.get(mode, {}).get(field) for r in runs]
    if not rows or any(not isinstance(x, list) for x in rows) or len({len(x) for x in rows}) != 1:
        return None
    return np.asarray(rows, np.float64)


def source_mode(runs: list[dict], mode: str) -> str | None:
    """The records that stand for `mode` in a method's runs: the mode itself where every run has it; for
    greedy_l0, greedy where no run has it (a fixed cap: its starting cap is its final one, as in the
    report's tables); None otherwise (some runs with it, some without: not pooled)."""
    has = [isinstance(r.get(mode), dict) for r in runs]
    if runs and all(has):
        return mode
    if mode == "greedy_l0" and not any(has):
        return "greedy"
    return None


def _pts(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _p(x: float) -> str:
    return "-" if not math.isfinite(x) else ("< 0.001" if x < 1e-3 else f"{x:.3f}")


def section_lines(per_method: dict[str, list[dict]], methods: list[str], size: int, baseline: str,
                  warm: dict | None = None) -> list[str]:
    """The markdown tables of the per-level study; per_method {method: [a run's `levels` record]}, warm the
    warm start's record (a row of the by-length tables). Empty when no method has per-level records from 2
    seeds."""
    lines: list[str] = []
    comps = {m: seed_components(y) for m in methods
             if (y := stack(per_method.get(m, []), "greedy")) is not None}
    comps = {m: c for m, c in comps.items() if c}
    if not comps:
        return lines
    more = 4 * size
    base = comps.get(baseline)
    lines += ["", f"#### Per level ({size} levels, greedy): the spread over seeds, split", "",
              "| method | seeds | std over seeds | level sample's (expected) | training's | F test p | "
              f"std at {more} levels | solved by every seed | by none | Welch half-width vs {baseline}: now, "
              f"at {more} levels, at infinitely many |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, c in comps.items():
        y = stack(per_method[m], "greedy")
        every, none = float((y.min(0) == 1).mean()), float((y.max(0) == 0).mean())
        widths = "-"
        if base is not None and m != baseline:
            widths = ", ".join(f"{100 * projected_half_width(c, base, n):.1f}" for n in (size, more, math.inf))
        lines.append(f"| {m} | {c['seeds']} | {_pts(c['std'])} | {_pts(math.sqrt(c['level_var'] / size))} | "
                     f"{_pts(math.sqrt(c['seed_var']))} | {_p(c['p'])} | {_pts(math.sqrt(projected_var(c, more)))} | "
                     f"{_pts(every)} | {_pts(none)} | {widths} |")
    lines += ["", "Points of greedy success. The std over seeds (the tables' ±) is expected to be "
              f"sqrt(level sample's² + training's²): the **level sample's** is what scoring on these {size} "
              f"particular levels adds (residual variance / {size}: which of them a policy happens to solve; "
              "estimated, so it can exceed the std seen), the **training's** the seeds' difference on levels in "
              "general (two-way random effects, one episode per seed and level; 0 where the seeds differ no "
              "more than the level sample explains). The F test asks whether they differ more (a small p: the "
              f"training's spread is real). At {more} levels only the level sample's share shrinks (by half); the Welch "
              f"half-widths against {baseline}, with the same seeds, show what more levels could separate "
              "and what only more seeds can. `solved by every seed` / `by none`: shares of the levels."]
    for mode in MODES:
        # Each method's records for this mode (greedy_l0: a fixed-cap method's greedy), and the table only
        # where some method has the mode itself.
        src = {m: sm for m in methods if (sm := source_mode(per_method.get(m, []), mode)) is not None}
        if mode not in src.values():
            continue
        ys = {m: y for m, sm in src.items() if (y := stack(per_method[m], sm)) is not None}
        opt = next((np.asarray(r[src[m]]["optimal"]) for m in ys for r in per_method[m][:1]
                    if isinstance(r.get(src[m], {}).get("optimal"), list)), None)
        if not ys or opt is None or len(opt) != next(iter(ys.values())).shape[1]:
            continue
        bins = length_bins(opt)
        if len(bins) < 2:
            continue
        masks = [(opt >= lo) & (opt <= hi) for lo, hi in bins]
        head = " | ".join(f"N_opt {lo}-{hi} ({int(k.sum())} levels)" if lo != hi else
                          f"N_opt {lo} ({int(k.sum())} levels)" for (lo, hi), k in zip(bins, masks))
        label = LABELS[mode]
        fixed = sorted(m for m in ys if src[m] != mode)
        note = (f" ({', '.join(fixed)}: a fixed cap, their final cap's episodes)" if mode == "greedy_l0" and fixed
                else "")
        lines += ["", f"Success ({label}) by the level's optimal solution length, mean over seeds (%){note}:", "",
                  f"| method | seeds | {head} |", "| --- | ---: |" + " ---: |" * len(bins)]
        rows = list(ys.items())
        warm_mode = source_mode([warm], mode) if warm is not None else None  # before RL every cap is L_0
        if warm_mode and (w := stack([warm], warm_mode)) is not None and w.shape[1] == len(opt):
            rows.insert(0, (WARM_START, w))
        for m, y in rows:
            cells = []
            for k in masks:
                per_seed = y[:, k].mean(1)
                cells.append(f"{_pts(per_seed.mean())}" + (f" ± {_pts(np.std(per_seed, ddof=1))}"
                                                             if len(per_seed) > 1 else ""))
            lines.append(f"| {m} | {y.shape[0]} | " + " | ".join(cells) + " |")
        short = {m: a for m in ys if (a := stack(per_method[m], src[m], "actions")) is not None}
        if short:
            lines += ["", f"Failures ({label}) by optimal length: the share of the bin's episodes that failed; of "
                      "those, the share that ended with fewer actions than the optimal solution has (an answer too "
                      "short to solve it), and their mean actions and turns; means over seeds:", "",
                      f"| method | seeds | {head} |", "| --- | ---: |" + " ---: |" * len(bins)]
            for m, acts in short.items():
                failed, turns = ys[m] == 0, stack(per_method[m], src[m], "turns")
                cells = []
                for k in masks:
                    f = failed[:, k]
                    runs = [i for i in range(len(f)) if f[i].any()]
                    if not runs:
                        cells.append(f"{_pts(f.mean())}% failed")
                        continue
                    too_short = np.mean([(acts[i, k][f[i]] < opt[k][f[i]]).mean() for i in runs])
                    n_act = np.mean([acts[i, k][f[i]].mean() for i in runs])
                    n_turn = "" if turns is None else f", {np.mean([turns[i, k][f[i]].mean() for i in runs]):.1f} turns"
                    cells.append(f"{_pts(f.mean())}% failed ({_pts(too_short)}% short; {n_act:.1f} actions{n_turn})")
                lines.append(f"| {m} | {acts.shape[0]} | " + " | ".join(cells) + " |")
    return lines


def load(exp_dir: str, size: int, agg: dict | None = None) -> tuple[list[str], dict[str, list[dict]], dict | None]:
    """(methods, {method: [each finished run's per-level record of eval_<size>.json]}, the warm start's);
    agg: the folder's `report.aggregate`, if already read."""
    if agg is None:
        from experiments.report import aggregate

        agg = aggregate(exp_dir)
    ev = agg["reeval"].get(size)
    if ev is None:
        raise SystemExit(f"{exp_dir}: no run has eval_{size}.json (python experiments/reevaluate.py "
                         f"{exp_dir} --eval-levels {size})")
    return agg["methods"], ev["levels"], ev["warm_levels"]


def pool(exp_dirs: list[str], size: int, aggs: list[dict] | None = None) -> tuple[list[str], dict[str, list[dict]],
                                                                                 dict | None]:
    """`load` over several folders of the same experiment (more seeds of a method, or re-runs), the runs of
    a method put together (aggs: their `report.aggregate`s, if already read). The folders must have scored
    the same levels: every run's optimal lengths agree, else a SystemExit names the folder (another
    environment, level count or evaluation key)."""
    methods, per_method, warm, ref = [], {}, None, None
    for i, d in enumerate(exp_dirs):
        ms, per, w = load(d, size, aggs[i] if aggs else None)
        methods += [m for m in ms if m not in methods]
        warm = warm if warm is not None else w
        for m, runs in per.items():
            for r in runs:
                opt = r.get("greedy", {}).get("optimal")
                if ref is None:
                    ref = opt
                elif opt != ref:
                    raise SystemExit(f"{d}: a {m} run was scored on other levels than {exp_dirs[0]}'s (its "
                                     "optimal lengths differ): not the same experiment")
            per_method.setdefault(m, []).extend(runs)
    return methods, per_method, warm


EVERY_RUN = (("greedy/success_rate", "greedy success (%)", 100.0), ("greedy/mean_turns", "mean turns", 1.0),
             ("single_turn/success_rate", "1 turn (%)", 100.0), ("greedy/efficacy", "N_eff/N (%)", 100.0),
             ("greedy/cycled", "greedy cycling (%)", 100.0))


def every_run_lines(aggs: list[dict], size: int, baseline: str) -> list[str]:
    """A table of every run's `eval_<size>.json` metrics in the folders (their `report.aggregate`s),
    per-level records or not (runs evaluated before those were kept count here): mean ± std over the runs,
    and each method's difference from `baseline` with its Welch 95% interval (greedy success and mean turns)."""
    from experiments.report import welch_interval

    methods, vals = [], {}
    for agg in aggs:
        for m in agg["methods"]:
            for r in agg["runs"][m]:
                after = (r["reeval"].get(size) or {}).get("after")
                if not after:
                    continue
                if m not in methods:
                    methods.append(m)
                for key, _, scale in EVERY_RUN:
                    if isinstance(after.get(key), (int, float)):
                        vals.setdefault(m, {}).setdefault(key, []).append(scale * after[key])
    if not methods:
        return []

    def cell(v):
        return "-" if not v else f"{np.mean(v):.2f}" if len(v) == 1 else f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"

    def against(m, key):
        w = welch_interval(vals[m].get(key, []), vals.get(baseline, {}).get(key, [])) if m != baseline else None
        return "-" if w is None else f"{w[0]:+.2f} [{w[1]:+.2f}, {w[2]:+.2f}]"

    lines = ["", f"#### Every run on {size} levels ({len(aggs)} folder(s), per-level records or not)", "",
             "| method | runs | " + " | ".join(h for _, h, _ in EVERY_RUN) + f" | success against {baseline} "
             f"| turns against {baseline} |", "| --- | ---: |" + " ---: |" * (len(EVERY_RUN) + 2)]
    for m in methods:
        n = len(vals[m]["greedy/success_rate"]) if "greedy/success_rate" in vals[m] else 0
        lines.append(f"| {m} | {n} | " + " | ".join(cell(vals[m].get(k)) for k, _, _ in EVERY_RUN)
                     + f" | {against(m, 'greedy/success_rate')} | {against(m, 'greedy/mean_turns')} |")
    lines += ["", f"Mean ± std over the runs; the differences from {baseline} with Welch 95% intervals (points of "
              "success, turns)."]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="+", help="experiment folders (RESULTS/<exp>, holding <method>/seed<k>/); "
                    "several: the runs of each method put together (the same levels are checked)")
    ap.add_argument("--size", type=int, default=256, help="which eval_<N>.json (default 256)")
    a = ap.parse_args(argv)
    for d in a.experiments:
        if not os.path.isdir(d):
            ap.error(f"not a folder: {d}")
    from experiments.report import BASELINE, aggregate

    aggs = [aggregate(d) for d in a.experiments]  # each folder read once, for both tables
    methods, per_method, warm = pool(a.experiments, a.size, aggs)
    lines = section_lines(per_method, methods, a.size, BASELINE, warm)
    if lines:
        lines += every_run_lines(aggs, a.size, BASELINE)
    if not lines:
        print(f"{', '.join(a.experiments)}: no method has per-level records of eval_{a.size}.json from 2 seeds "
              f"(runs evaluated before they were kept: python experiments/reevaluate.py <exp> "
              f"--eval-levels {a.size} --force)")
        return 1
    print("\n".join(lines).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
