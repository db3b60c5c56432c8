"""Success against the turn budget: each run's final policy, greedy, under every turn cap from 1 to L_0.

    python experiments/budget.py RESULTS/<exp> [RESULTS/<exp2> ...] [--caps 1,2,3,4,5] [--eval-levels 256]
                                 [--methods wmact,interactive] [--out DIR]

The paper's claim for annealing is that the policy learns to solve in fewer turns. A method's own table
scores it at its own final cap (annealed for WMAct, L_0 for the baselines) and at one turn; this plays every
run's latest policy at each cap of `--caps` on the same `--eval-levels` held-out levels (the evaluation's
own, `Trainer.eval_key()`: those of eval_<N>.json) and asks, cap by cap, whether an annealed policy does
better on a small budget than a baseline's policy given the same budget.

Each run with checkpoints gets `<run>/caps_<N>.json` = {"eval_levels", "method", "step", "max_turns" (the run's
static turn bound: caps above it are left out), "caps": {cap:
{"success_rate", "mean_turns", "first_actions", "solved": [0/1 per level]}}} (kept: a run whose file
already holds its latest checkpoint and every asked cap is not played again; `--force`). Runs without
checkpoints (a published folder) are read from that file. The folders given are pooled by method (re-runs,
more seeds: the same levels are checked), and the table gives each method's mean ± std over runs per cap,
the difference from PPO-Interactive's with a Welch 95% interval, and the success on the longest levels
(the oracle's optimal lengths, from the runs' eval_<N>.json). `--out DIR` also writes DIR/budget.md and
DIR/budget.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import levels, report  # noqa: E402
from experiments.report import BASELINE  # noqa: E402


def caps_file(run_dir: str, eval_levels: int) -> str:
    return os.path.join(run_dir, f"caps_{eval_levels}.json")


def _read(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def play_caps(run_dir: str, method: str, caps: list[int], eval_levels: int, pool=None, force: bool = False,
              log=print) -> dict | None:
    """The run's caps_<N>.json after playing its latest policy at every cap it lacks; None (logged) for an
    unfinished run or one without checkpoints and without the file."""
    import jax

    from experiments.reevaluate import open_run
    from wmact_jax.main import _saved_steps, _write_json

    path, old = caps_file(run_dir, eval_levels), _read(caps_file(run_dir, eval_levels))
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not os.path.isfile(os.path.join(run_dir, "final.json")):
        log(f"{run_dir}: unfinished (no final.json), skipped")
        return None
    if not os.path.isdir(ckpt_dir):
        if old is None:
            log(f"{run_dir}: no checkpoints/ and no {os.path.basename(path)}, skipped")
        return old
    saved = _saved_steps(ckpt_dir)
    if not saved:
        if old is None:
            log(f"{run_dir}: no checkpoint in {ckpt_dir} and no {os.path.basename(path)}, skipped")
        return old
    latest = saved[-1]
    same = bool(old) and old.get("step") == latest and not force
    have, bound = (old["caps"], old.get("max_turns", math.inf)) if same else ({}, math.inf)
    todo = [c for c in caps if str(c) not in have and c <= bound]
    if not todo:
        return old
    t0 = time.time()
    trainer, restore, steps, _ = open_run(run_dir, eval_levels, trainer_cls=pool)
    state = restore(steps[-1])
    out = dict(have)
    over = [c for c in todo if c > trainer.max_turns]
    if over:  # PPO-EntirePlan's bound is one turn; a cap above a run's bound is not a budget it can be given
        log(f"{run_dir}: caps {', '.join(map(str, over))} are above its static turn bound {trainer.max_turns}, "
            "left out")
        todo = [c for c in todo if c <= trainer.max_turns]
    for cap in todo:
        b = jax.device_get(trainer.eval_batch(state.ppo.params, cap, 0.0))
        solved = np.asarray(b.success, bool)
        out[str(cap)] = {"success_rate": float(solved.mean()), "mean_turns": float(np.mean(b.turns)),
                         "first_actions": float(np.mean(np.asarray(b.turn_actions)[:, 0])),
                         "solved": solved.astype(int).tolist()}
    record = {"eval_levels": eval_levels, "method": method, "step": int(steps[-1]),
              "max_turns": int(trainer.max_turns),
              "caps": dict(sorted(out.items(), key=lambda kv: int(kv[0])))}
    _write_json(path, record, compact_lists=True)
    if todo:
        log(f"{run_dir}: caps {', '.join(map(str, todo))} -> " + ", ".join(
            f"{c}: {100 * out[str(c)]['success_rate']:.1f}%" for c in todo) + f" ({time.time() - t0:.0f} s)")
    return record


def collect(exp_dirs: list[str], caps: list[int], eval_levels: int, methods: list[str] | None = None,
            force: bool = False, play: bool = True, log=print) -> tuple[list[str], dict[str, list[dict]]]:
    """(methods in order, {method: [caps record + "optimal" (the run's eval_<N>.json optimal lengths or
    None)]}) over every run of the folders. play=False only reads the files."""
    from experiments.reevaluate import run_dirs
    from experiments.run import TrainerPool

    order, per = [], {}
    for d in exp_dirs:
        pool = TrainerPool()
        for method, _, run_dir in run_dirs(d, None):  # a method may be in some of the folders only
            if methods and method not in methods:
                continue
            rec = (play_caps(run_dir, method, caps, eval_levels, pool, force, log) if play
                   else _read(caps_file(run_dir, eval_levels)))
            if rec is None:
                continue
            ev = _read(os.path.join(run_dir, f"eval_{eval_levels}.json")) or {}
            opt = ev.get("after", {}).get("levels", {}).get("greedy", {}).get("optimal")
            if method not in order:
                order.append(method)
            per.setdefault(method, []).append({**rec, "optimal": opt, "run": run_dir})
    missing = sorted(set(methods or ()) - set(order))
    if missing:
        raise SystemExit(f"no runs of method(s) {', '.join(missing)} in {', '.join(exp_dirs)}")
    lengths = {tuple(r["optimal"]) for rs in per.values() for r in rs if r["optimal"]}
    if len(lengths) > 1:
        raise SystemExit("the folders' runs were scored on different levels (their optimal lengths differ)")
    return report._order_methods([], order), per  # the tables' method order


def success_at(runs: list[dict], cap: int, mask: np.ndarray | None = None) -> list[float]:
    """Each run's greedy success under `cap` (on the levels of `mask` only, if given); runs without it left out."""
    out = []
    for r in runs:
        c = r["caps"].get(str(cap))
        if c is not None:
            out.append(float(np.asarray(c["solved"], float)[mask].mean()) if mask is not None else c["success_rate"])
    return out


def _cell(vals: list[float]) -> str:
    st = report._stats(vals)  # mean and sample std, as the tables of report.py
    if not st["n"]:
        return "-"
    return f"{100 * st['mean']:.1f}" + (f" ± {100 * st['std']:.1f}" if st["std"] is not None else "")


def table_lines(order: list[str], per: dict[str, list[dict]], caps: list[int], eval_levels: int,
                baseline: str = BASELINE) -> list[str]:
    """Markdown: success by cap (mean ± std over runs), on the longest levels too, and against baseline."""
    def at(m, cap, mask=None):
        return success_at(per[m], cap, mask)

    head = " | ".join(f"cap {c}" for c in caps)
    rule = "| --- | ---: |" + " ---: |" * len(caps)
    lines = [f"Greedy success (%) of each run's final policy under each turn cap, {eval_levels} held-out levels, "
             "mean ± std over runs:", "", f"| method | runs | {head} |", rule]
    lines += [f"| {m} | {len(per[m])} | " + " | ".join(_cell(at(m, c)) for c in caps) + " |" for m in order]
    turns = [f"| {m} | {len(per[m])} | " + " | ".join(
        f"{np.mean([r['caps'][str(c)]['mean_turns'] for r in per[m] if str(c) in r['caps']]):.2f}"
        if any(str(c) in r["caps"] for r in per[m]) else "-" for c in caps) + " |" for m in order]
    lines += ["", "Mean turns used under each cap (mean over runs):", "", f"| method | runs | {head} |", rule] + turns
    opt = next((np.asarray(r["optimal"]) for m in order for r in per[m] if r["optimal"]), None)
    bins = levels.length_bins(opt) if opt is not None else []
    if len(bins) > 1:  # the hardest of levels.py's bins of about equal size (its by-length tables')
        lo, hi = bins[-1]
        mask = (opt >= lo) & (opt <= hi)
        lines += ["", f"The same on the longest levels (optimal solution of {lo}-{hi} moves: "
                  f"{int(mask.sum())} of {len(opt)}):", "", f"| method | runs | {head} |", rule]
        lines += [f"| {m} | {len(per[m])} | " + " | ".join(_cell(at(m, c, mask)) for c in caps) + " |"
                  for m in order]
    if baseline in per:
        lines += ["", f"Against {baseline} under the same cap (points, Welch 95% interval over runs):", "",
                  f"| method | {head} |", "| --- |" + " ---: |" * len(caps)]
        for m in order:
            if m == baseline:
                continue
            cells = []
            for c in caps:
                w = report.welch_interval(at(m, c), at(baseline, c))
                cells.append("-" if w is None else f"{100 * w[0]:+.1f} [{100 * w[1]:+.1f}, {100 * w[2]:+.1f}]")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def plot(order: list[str], per: dict[str, list[dict]], caps: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(order):
        dodge = 0.05 * (i - (len(order) - 1) / 2)  # the error bars side by side, not on top of each other
        xs, ms, ss = [], [], []
        for c in caps:
            st = report._stats(success_at(per[m], c))
            if st["n"]:
                xs.append(c + dodge)
                ms.append(100 * st["mean"])
                ss.append(100 * st["std"] if st["std"] is not None else 0.0)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=f"{m} ({len(per[m])} runs)")
    ax.set_xlabel("turn cap")
    ax.set_ylabel("greedy success (%)")
    ax.set_xticks(caps)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="+", help="experiment folders (RESULTS/<exp>, holding <method>/seed<k>/)")
    ap.add_argument("--caps", default="1,2,3,4,5", help="comma-separated turn caps")
    ap.add_argument("--eval-levels", type=int, default=256)
    ap.add_argument("--methods", help="comma-separated methods (default: every method folder)")
    ap.add_argument("--force", action="store_true", help="play every cap again where caps_<N>.json exists")
    ap.add_argument("--no-play", action="store_true", help="only read the runs' caps_<N>.json files")
    ap.add_argument("--out", help="a folder for budget.md and budget.png")
    a = ap.parse_args(argv)
    try:
        caps = sorted({int(c) for c in a.caps.split(",") if c.strip()})
    except ValueError:
        ap.error(f"--caps takes comma-separated integers, got {a.caps!r}")
    if not caps or caps[0] < 1:
        ap.error(f"--caps must be positive turn caps, got {a.caps!r}")
    if a.eval_levels < 1:
        ap.error(f"--eval-levels must be positive, got {a.eval_levels}")
    for d in a.experiments:
        if not os.path.isdir(d):
            ap.error(f"not a folder: {d}")
    methods = [m for m in (a.methods or "").split(",") if m] or None
    order, per = collect(a.experiments, caps, a.eval_levels, methods, a.force, not a.no_play)
    if not per:
        print(f"{', '.join(a.experiments)}: no run with checkpoints or caps_{a.eval_levels}.json")
        return 1
    lines = table_lines(order, per, caps, a.eval_levels)
    print("\n".join(lines))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        cmd = "python experiments/budget.py " + " ".join(
            os.path.relpath(d, ROOT) if os.path.abspath(d).startswith(ROOT) else d for d in a.experiments)
        cmd += f" --caps {a.caps} --eval-levels {a.eval_levels}" + (f" --methods {a.methods}" if a.methods else "")
        with open(os.path.join(a.out, "budget.md"), "w") as f:
            f.write(f"# Success against the turn budget\n\n`{cmd}`\n\n"
                    + "\n".join(lines) + "\n")
        # The environment, from the experiment.json of the first run's experiment folder (<exp>/<method>/seed<k>).
        first = per[order[0]][0]["run"]
        env = (_read(os.path.join(os.path.dirname(os.path.dirname(first)), "experiment.json")) or {}).get("env", "")
        plot(order, per, caps, os.path.join(a.out, "budget.png"),
             f"{env}: greedy success of the final policies by turn cap\n({a.eval_levels} levels; bars: std over runs)")
        print(f"wrote {os.path.join(a.out, 'budget.md')} and budget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
