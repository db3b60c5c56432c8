"""Reports for an experiment suite: per-experiment tables and curves, a flat results file, a summary.

Input (written by ``experiments/run.py``)::

    RESULTS_DIR/[suite.json]
    RESULTS_DIR/<exp>/experiment.json
    RESULTS_DIR/<exp>/<method>/seed<k>/metrics.jsonl, final.json
    RESULTS_DIR/<exp>/<method>/seed<k>/eval_<N>.json   (optional: train.final_eval_levels, experiments/reevaluate.py)

Output: ``<exp>/table.md``, ``<exp>/curves.png``, ``<exp>/eval.png``, ``results.jsonl`` and
``summary.md`` (every table plus image links; the file the README points to).

Runs may be incomplete (a suite still running, or killed): everything that exists is reported and
each cell says over how many seeds it is aggregated. Final numbers come only from ``final.json``
(a run's last eval before finishing was taken after fewer iterations: mixing it in would bias the
table); curves use every training record, also of unfinished runs.

Each table also sets every method's greedy success against PPO-Interactive's (the paper's baseline):
the difference of the means over seeds with a Welch 95% interval; where the runs kept per-level records,
experiments/levels.py's study (the seeds' spread split into the levels' and the training's, success by
optimal length) follows.

Self-contained (numpy, matplotlib, scipy for the t and F quantiles, standard library) and never imports jax,
so it runs in a second on a laptop holding only the results. CLI: ``python experiments/report.py RESULTS_DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: experiments/levels.py beside it, as a package module
    sys.path.insert(0, ROOT)

from experiments import levels  # noqa: E402

# Table order when experiment.json does not list the methods; other methods follow alphabetically.
METHOD_ORDER = ("entire_plan", "interactive", "rescale", "wmact", "step_penalty")
# entire_plan answers with one whole plan: its greedy eval *is* a single-turn eval.
SINGLE_TURN_METHODS = ("entire_plan",)
WARM_START_ROW = "warm start (before RL)"
EVAL_KEY = "eval/greedy/success_rate"
BASELINE = "interactive"  # the paper's baseline: every other method's greedy success is set against it
L0_KEY = "greedy_l0/success_rate"


class ReportError(Exception):
    """Bad or missing input (e.g. an empty results directory): the CLI prints it and exits 2."""


# ----------------------------------------------------------------------------------------- loading

def read_json(path: str) -> Any:
    """A JSON file, or None when it is missing or unreadable (a run may be writing it right now)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_jsonl(path: str) -> tuple[list[dict], int]:
    """Complete records of a JSONL file and the number of skipped lines (a kill cuts the last one)."""
    records, skipped = [], 0
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    skipped += 1
    except OSError:
        pass
    return records, skipped


def _num(v: Any) -> float | None:
    """A finite float, else None (null, NaN, bools and strings are not measurements)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _step(rec: dict) -> int | None:
    s = rec.get("step")
    return int(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None


def _series(records: list[dict], key: str, min_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key`, sorted by step; a step logged twice keeps its last value."""
    by_step: dict[int, float] = {}
    for rec in records:
        s = _step(rec)
        if s is None or s < min_step or key not in rec:
            continue
        v = _num(rec[key])
        if v is None:
            by_step.pop(s, None)
        else:
            by_step[s] = v
    steps = sorted(by_step)
    return np.asarray(steps, dtype=np.int64), np.asarray([by_step[s] for s in steps], dtype=np.float64)


def load_run(run_dir: str) -> dict:
    """One run directory -> its records and final numbers.

    Returns a dict with ``dir``, ``records`` (every valid metrics.jsonl line), ``skipped_lines``,
    ``final`` (final.json or None), ``complete`` (final.json present), ``before`` / ``after``
    (flat evaluation metrics; ``before`` falls back to eval_initial.json, then to the step-0 eval
    records, so unfinished runs still contribute to the warm-start row; ``after`` is None while
    unfinished), ``last_step`` (highest step logged), ``seconds`` and ``reeval`` ({N: {"after", "before",
    "step"}} from the run's eval_<N>.json files: its policy evaluated again on N levels; "before" is
    None but in a method's first seed).
    """
    records, skipped = _read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    final = read_json(os.path.join(run_dir, "final.json"))
    if not isinstance(final, dict):
        final = None

    def metrics_of(part: Any) -> dict | None:
        if isinstance(part, dict) and isinstance(part.get("metrics"), dict) and part["metrics"]:
            return part["metrics"]
        return None

    before = metrics_of(final.get("before")) if final else None
    if before is None:
        before = metrics_of(read_json(os.path.join(run_dir, "eval_initial.json")))
    if before is None:  # rebuild from the step-0 eval records: eval/<mode>/<metric> -> <mode>/<metric>
        before = {}
        for rec in records:
            if _step(rec) == 0:
                before.update({k[len("eval/"):]: v for k, v in rec.items() if k.startswith("eval/")})
    after = metrics_of(final.get("after")) if final else None
    steps = [s for s in map(_step, records) if s is not None]
    config = read_json(os.path.join(run_dir, "config.json"))
    anneal = config.get("anneal") if isinstance(config, dict) else None
    kind = anneal.get("kind") if isinstance(anneal, dict) else None
    return {
        "dir": run_dir,
        "records": records,
        "skipped_lines": skipped,
        "final": final,
        "complete": final is not None,
        "before": before or {},
        "after": after if final is not None else None,
        "after_step": (final.get("after") or {}).get("step") if final else None,
        "last_step": max(steps) if steps else None,
        "seconds": _num(final.get("seconds")) if final else None,
        # The turn cap never moves (config.json's anneal.kind 'fixed'); None: no readable config.
        "fixed_cap": kind == "fixed" if isinstance(kind, str) else None,
        "reeval": _reevaluations(run_dir),
    }


def _reevaluations(run_dir: str) -> dict[int, dict]:
    """{N: {"after", "before", "step"}} of a run's eval_<N>.json files (experiments/reevaluate.py)."""
    out = {}
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    for name in names:
        size = name[len("eval_"):-len(".json")] if name.startswith("eval_") and name.endswith(".json") else ""
        if not size.isdigit():
            continue
        data = read_json(os.path.join(run_dir, name))
        after = data.get("after") if isinstance(data, dict) else None
        if not (isinstance(after, dict) and isinstance(after.get("metrics"), dict)):
            continue
        before = data.get("before")
        out[int(size)] = {"after": after["metrics"], "step": after.get("step"),
                          "levels": after.get("levels") if isinstance(after.get("levels"), dict) else None,
                          "before_levels": before.get("levels") if isinstance(before, dict)
                          and isinstance(before.get("levels"), dict) else None,
                          "before": before["metrics"] if isinstance(before, dict)
                          and isinstance(before.get("metrics"), dict) else None}
    return out


def _seed_of(name: str) -> int | str:
    tail = name[len("seed"):]
    try:
        return int(tail)
    except ValueError:
        return tail


def _seed_sort_key(seed: int | str) -> tuple:
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _names(items: Any) -> list[str]:
    """Names from a list of strings or of {"name": ...} dicts (experiment.json is the lead's format)."""
    out = []
    for it in items if isinstance(items, (list, tuple)) else []:
        name = it if isinstance(it, str) else it.get("name") if isinstance(it, dict) else None
        if name and name not in out:
            out.append(str(name))
    return out


def seed_dirs(method_dir: str) -> list[str]:
    """The `seed<k>` run folders of a method folder, by seed (none if the folder is missing)."""
    names = os.listdir(method_dir) if os.path.isdir(method_dir) else []
    return sorted((s for s in names if s.startswith("seed") and os.path.isdir(os.path.join(method_dir, s))),
                  key=lambda s: _seed_sort_key(_seed_of(s)))


def _method_dirs(exp_dir: str) -> list[str]:
    """Sub-directories holding at least one ``seed*`` directory."""
    out = []
    for name in sorted(os.listdir(exp_dir)):
        path = os.path.join(exp_dir, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        if any(s.startswith("seed") and os.path.isdir(os.path.join(path, s)) for s in os.listdir(path)):
            out.append(name)
    return out


def _order_methods(listed: list[str], found: list[str]) -> list[str]:
    if listed:
        return listed + [m for m in sorted(found) if m not in listed]
    known = [m for m in METHOD_ORDER if m in found]
    return known + [m for m in sorted(found) if m not in known]


# -------------------------------------------------------------------------------------- statistics

def _stats(values: list[float]) -> dict:
    """Mean and sample std (ddof=1: 2-3 seeds estimate a spread, they are not the population)."""
    vals = [v for v in values if v is not None]
    n = len(vals)
    return {"values": vals, "n": n,
            "mean": float(np.mean(vals)) if n else None,
            "std": float(np.std(vals, ddof=1)) if n > 1 else None}


def _columns(transfer: list[str]) -> list[dict]:
    """The table's columns: metric key in final.json's flat metrics, header, kind (rate / number)."""
    cols = [
        {"id": "success", "key": "greedy/success_rate", "header": "success, final turn cap (%)",
         "kind": "rate"},
        {"id": "sampled", "key": "sampled/success_rate", "header": "success, sampled (%)", "kind": "rate"},
        {"id": "single", "key": "single_turn/success_rate", "header": "success, 1 turn (%)", "kind": "rate"},
        {"id": "turns", "key": "greedy/mean_turns", "header": "mean turns", "kind": "number"},
        {"id": "per_turn", "key": ("greedy/mean_actions", "greedy/mean_turns"), "header": "actions per turn",
         "kind": "number"},
        {"id": "efficacy", "key": "greedy/efficacy", "header": "N_eff/N (%)", "kind": "rate"},
        {"id": "gap", "key": "greedy/optimality_gap", "header": "optimality gap", "kind": "number"},
        # Greedy episodes that came back to a state they had been in (recorded since 2026-12-05: shown only
        # where some run has it).
        {"id": "cycled", "key": "greedy/cycled", "header": "greedy, cycling (%)", "kind": "rate", "optional": True},
        # Greedy at the starting cap L_0 (evaluated since 2026-12-06 where the cap anneals; shown where
        # some run has it): every method on the baselines' budget.
        {"id": "l0", "key": L0_KEY, "header": "success, starting cap (%)", "kind": "rate", "optional": True},
    ]
    for env in transfer:
        cols.append({"id": f"transfer:{env}", "key": f"transfer/{env}/success_rate",
                     "header": f"{env} success (%)", "kind": "rate"})
    return cols


def _cells(metric_dicts: list[dict], cols: list[dict], single_from_greedy: bool = False) -> dict:
    cells = {}
    for col in cols:
        key = col["key"]
        if col["id"] == "single" and single_from_greedy:
            key = "greedy/success_rate"
        if isinstance(key, tuple):  # a ratio of two metrics
            vals = [(_num(m.get(key[0])), _num(m.get(key[1]))) for m in metric_dicts]
            cells[col["id"]] = _stats([a / b if a is not None and b else None for a, b in vals])
        else:
            cells[col["id"]] = _stats([_num(m.get(key)) for m in metric_dicts])
        cells[col["id"]]["from_greedy"] = col["id"] == "single" and single_from_greedy
    return cells


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (partial windows at the start keep the first iterations visible)."""
    if window <= 1 or values.size == 0:
        return values
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(values.size)
    lo = np.maximum(0, idx + 1 - window)
    return (c[idx + 1] - c[lo]) / (idx + 1 - lo)


def _band(per_run: list[tuple[np.ndarray, np.ndarray]], window: int = 1) -> dict | None:
    """Mean and min..max over runs at every step any run logged (runs smoothed individually first)."""
    per_run = [(s, _smooth(v, window)) for s, v in per_run if s.size]
    if not per_run:
        return None
    steps = np.unique(np.concatenate([s for s, _ in per_run]))
    grid = np.full((len(per_run), steps.size), np.nan)
    for i, (s, v) in enumerate(per_run):
        grid[i, np.searchsorted(steps, s)] = v
    count = np.sum(~np.isnan(grid), axis=0)
    return {"steps": steps, "mean": np.nanmean(grid, axis=0), "lo": np.nanmin(grid, axis=0),
            "hi": np.nanmax(grid, axis=0), "count": count, "n_runs": len(per_run)}


def aggregate(exp_dir: str) -> dict:
    """Everything one experiment's report needs: runs per method, table cells, curves.

    Returns a dict with ``exp``, ``dir``, ``env``, ``transfer``, ``iterations``, ``experiment``
    (experiment.json or {}), ``methods`` (table order), ``runs`` ({method: [run, ...]}, each run
    from `load_run` plus ``seed``), ``columns``, ``rows`` ({method: {"cells", "n", "planned",
    "incomplete"}}; a cell is {"values", "n", "mean", "std"} over completed seeds), ``warm_start``
    (same shape, over every run's before-RL metrics), ``window`` (smoothing) and ``curves``
    ({method: {"success_rate", "mean_turns", "eval"}: band dict or None}).
    """
    if not os.path.isdir(exp_dir):
        raise ReportError(f"experiment directory not found: {exp_dir}")
    exp_dir = os.path.abspath(exp_dir)
    meta = read_json(os.path.join(exp_dir, "experiment.json"))
    meta = meta if isinstance(meta, dict) else {}
    methods = _order_methods(_names(meta.get("methods")), _method_dirs(exp_dir))
    planned_seeds = meta.get("seeds") if isinstance(meta.get("seeds"), list) else None
    # Seeds planned per method (run.py records them since 2026-12-08); older records have one list for all.
    by_method = meta.get("method_seeds") if isinstance(meta.get("method_seeds"), dict) else {}

    def planned(method: str):
        own = by_method.get(method)
        if isinstance(own, list):
            return len(own)
        return len(planned_seeds) if planned_seeds is not None else None

    runs: dict[str, list[dict]] = {}
    for method in methods:
        mdir = os.path.join(exp_dir, method)
        runs[method] = [dict(load_run(os.path.join(mdir, s)), seed=_seed_of(s)) for s in seed_dirs(mdir)]

    # Transfer envs: those experiment.json names, then any other found in the final metrics.
    transfer = _names(meta.get("transfer"))
    for method in methods:
        for run in runs[method]:
            for key in run["after"] or {}:
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == "transfer" and parts[2] == "success_rate" \
                        and parts[1] not in transfer:
                    transfer.append(parts[1])
    cols = _columns(transfer)
    # Where a cap never moves, success at the starting cap is greedy success itself (the runner skips
    # that evaluation as a repeat); before RL every cap is the starting one. Filled in for the table only
    # (the runs, and results.jsonl, keep what was evaluated), and only when some run evaluated greedy_l0,
    # so older tables keep their columns.
    has_l0 = any(L0_KEY in (r[part] or {}) for m in methods for r in runs[m] for part in ("after", "before"))

    def with_l0(metrics: dict, same: bool) -> dict:
        if has_l0 and same and L0_KEY not in metrics and "greedy/success_rate" in metrics:
            return {**metrics, L0_KEY: metrics["greedy/success_rate"]}
        return metrics

    rows = {}
    for method in methods:
        done = [r for r in runs[method] if r["complete"] and r["after"] is not None]
        rows[method] = {
            "cells": _cells([with_l0(r["after"], bool(r["fixed_cap"])) for r in done], cols,
                            method in SINGLE_TURN_METHODS),
            "n": len(done),
            "planned": planned(method),
            "incomplete": [r for r in runs[method] if not r["complete"]],
        }
    # The shared warm start, evaluated before RL in each prompt format: entire_plan's one-turn prompt
    # and the interactive methods' multi-turn prompt give different numbers for the same policy.
    def befores(single: bool) -> list[dict]:
        return [with_l0(r["before"], True) for m in methods if (m in SINGLE_TURN_METHODS) == single
                for r in runs[m] if any(_num(v) is not None for v in r["before"].values())]

    multi, one = befores(False), befores(True)
    warm = {"cells": _cells(multi, cols), "n": len(multi),
            "one_turn": {"cells": _cells(one, cols, True), "n": len(one)}}
    # The same table from the runs' policies evaluated again on more levels (eval_<N>.json), by size.
    reeval = {}
    for size in sorted({n for m in methods for r in runs[m] for n in r["reeval"]}):
        ev = {m: [r for r in runs[m] if size in r["reeval"]] for m in methods}
        pre = {single: [with_l0(r["reeval"][size]["before"], True) for m in methods
                        if (m in SINGLE_TURN_METHODS) == single for r in ev[m] if r["reeval"][size]["before"]]
               for single in (False, True)}
        reeval[size] = {
            "rows": {m: {"cells": _cells([with_l0(r["reeval"][size]["after"], bool(r["fixed_cap"])) for r in ev[m]],
                                         cols, m in SINGLE_TURN_METHODS),
                         "n": len(ev[m]), "planned": rows[m]["planned"], "incomplete": []} for m in methods},
            "warm_start": {"cells": _cells(pre[False], cols), "n": len(pre[False]),
                           "one_turn": {"cells": _cells(pre[True], cols, True), "n": len(pre[True])}},
            "steps": sorted({r["reeval"][size]["step"] for m in methods for r in ev[m]} - {None}),
            "per_seed": {m: [(r["seed"], _num(r["reeval"][size]["after"].get("greedy/success_rate"))) for r in ev[m]]
                         for m in methods},
            "levels": {m: [r["reeval"][size]["levels"] for r in ev[m] if r["reeval"][size]["levels"]]
                       for m in methods},  # per-level episodes (experiments/levels.py)
            "warm_levels": next((r["reeval"][size]["before_levels"] for m in sorted(methods, key=lambda m: m != BASELINE)
                                 if m not in SINGLE_TURN_METHODS for r in ev[m] if r["reeval"][size]["before_levels"]),
                                None),  # the warm start's, in a multi-turn method's prompt format
        }
    cols = [c for c in cols if not c.get("optional")
            or any(r["cells"][c["id"]]["n"] for r in (*rows.values(), warm, warm["one_turn"]))]

    last_steps = [r["last_step"] for m in methods for r in runs[m] if r["last_step"]]
    iterations = meta.get("iterations")
    n_iter = int(iterations) if _num(iterations) else (max(last_steps) if last_steps else 0)
    window = max(1, n_iter // 10)
    curves = {}
    for method in methods:
        rs = runs[method]
        curves[method] = {
            "success_rate": _band([_series(r["records"], "success_rate", 1) for r in rs], window),
            "mean_turns": _band([_series(r["records"], "mean_turns", 1) for r in rs], window),
            "eval": _band([_series(r["records"], EVAL_KEY, 0) for r in rs]),
            "unfinished": sum(1 for r in rs if not r["complete"] and r["last_step"]),
        }
    return {"exp": os.path.basename(exp_dir), "dir": exp_dir, "env": meta.get("env"),
            "transfer": transfer, "iterations": iterations if _num(iterations) is not None else None,
            "experiment": meta, "methods": methods, "runs": runs, "columns": cols, "rows": rows,
            "warm_start": warm, "window": window, "curves": curves, "reeval": reeval}


# ------------------------------------------------------------------------------------------ tables

def _fmt_value(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if kind == "rate" else f"{v:.2f}"


def _fmt_cell(cell: dict, kind: str, row_n: int) -> str:
    if not cell["n"]:
        return "-"
    text = _fmt_value(cell["mean"], kind)
    if cell["std"] is not None:
        text += f" ± {_fmt_value(cell['std'], kind)}"
    if cell["n"] < row_n:  # e.g. no optimality gap when a seed solved nothing
        text += f" (n={cell['n']})"
    if cell.get("from_greedy"):
        text += " †"
    return text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _table_lines(agg: dict) -> list[str]:
    cols = agg["columns"]
    header = ["method"] + [c["header"] for c in cols] + ["n seeds"]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "| --- |" + " ---: |" * (len(cols) + 1)]
    warm = agg["warm_start"]
    for label, w in ((WARM_START_ROW, warm), (WARM_START_ROW + ", one-turn prompt", warm.get("one_turn"))):
        if w and w["n"]:
            cells = [_fmt_cell(w["cells"][c["id"]], c["kind"], w["n"]) for c in cols]
            runs = f"{w['n']} run" + ("s" if w["n"] != 1 else "")
            lines.append(f"| *{label}* | " + " | ".join(cells) + f" | {runs} |")
    for method in agg["methods"]:
        row = agg["rows"][method]
        cells = [_fmt_cell(row["cells"][c["id"]], c["kind"], row["n"]) for c in cols]
        n = f"{row['n']}/{row['planned']}" if row["planned"] is not None else str(row["n"])
        lines.append(f"| {_md_escape(method)} | " + " | ".join(cells) + f" | {n} |")
    return lines


def _compact(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _run_status(run: dict, iterations: Any) -> str:
    if run["last_step"] is None:
        return "incomplete, no records yet"
    total = f" of {int(iterations)}" if _num(iterations) else ""
    return f"incomplete, at step {run['last_step']}{total}"


def _experiment_body(agg: dict, image_prefix: str = "") -> str:
    """The table, its legend, per-seed values and image links (shared by table.md and summary.md)."""
    lines = _table_lines(agg)
    if any(agg["rows"][m]["cells"]["single"].get("from_greedy") and agg["rows"][m]["n"]
           for m in agg["methods"]):
        lines += ["", "† " + ", ".join(SINGLE_TURN_METHODS) + " answers with one whole plan (single "
                  "turn by construction): its greedy success is shown in the 1-turn column."]
    meta = agg["experiment"]
    its = agg["iterations"]
    env = f"Environment **{agg['env']}**" if agg["env"] else "Environment not recorded (no experiment.json)"
    lines += ["", f"{env}, {its if its is not None else 'unknown number of'} RL iterations per run. "
              "Evaluation after training (`final.json`); each cell is the mean ± sample std "
              "(ddof=1) over completed seeds (no ± with one seed; `(n=k)` when a metric exists in "
              "fewer seeds than the row, e.g. no optimality gap when nothing was solved); `-` = absent.",
              "",
              "- **success, final turn cap**: greedy decoding, turn cap at its final (curriculum) "
              "value (`greedy/success_rate`).",
              "- **success, sampled**: the same levels and turn cap, sampling at the training "
              "temperature (`sampled/success_rate`; small models often loop under greedy decoding).",
              "- **success, 1 turn**: greedy, the whole plan in a single turn "
              "(`single_turn/success_rate`).",
              "- **mean turns**: turns per greedy episode (`greedy/mean_turns`).",
              "- **actions per turn**: actions per greedy turn (`greedy/mean_actions / greedy/mean_turns`); 1.00 "
              "= one action and a look at the result, every turn.",
              "- **N_eff/N**: share of actions that changed the state, sum N_eff / sum N over "
              "episodes (`greedy/efficacy`).",
              "- **optimality gap**: mean (N - N_opt) / N_opt over solved levels, 0 = optimal "
              "(`greedy/optimality_gap`; a ratio, not a percentage)."]
    if any(c["id"] == "l0" for c in agg["columns"]):
        lines.append("- **success, starting cap**: greedy with the turn cap the runs started from, L_0 "
                     "(`greedy_l0/success_rate`): the same budget for a method whose cap annealed as for "
                     "the baselines, whose cap stays at L_0 (theirs is their final-cap success).")
    if any(c["id"] == "cycled" for c in agg["columns"]):
        lines.append("- **greedy, cycling**: greedy episodes that came back to a state they had been in, a "
                     "turn whose actions changed nothing included (`greedy/cycled`; greedy decoding shown the "
                     "same grid again tends to answer as before).")
    for env_name in agg["transfer"]:
        lines.append(f"- **{env_name} success**: greedy success on {env_name} without training on it "
                     f"(`transfer/{env_name}/success_rate`).")
    lines.append(f"- **{WARM_START_ROW}**: the same evaluation before RL (all runs share one warm "
                 "start; mean over every run's initial evaluation).")
    caps = sorted({_num(r["after"].get("greedy/turn_cap")) for m in agg["methods"]
                   for r in agg["runs"][m] if r["after"]} - {None})
    if caps:
        lines.append("- final greedy turn cap: " + ", ".join(f"{c:g}" for c in caps) + ".")
    setup = []
    if meta.get("methods"):
        setup.append("methods " + ", ".join(_names(meta["methods"])))
    if isinstance(meta.get("seeds"), list):
        setup.append("seeds " + ", ".join(map(str, meta["seeds"])))
        by_method = meta.get("method_seeds") if isinstance(meta.get("method_seeds"), dict) else {}
        groups: dict[tuple, list[str]] = {}  # seed list -> methods, where the methods' seeds differ
        for m, own in by_method.items():
            if isinstance(own, list):
                groups.setdefault(tuple(own), []).append(str(m))
        if len(groups) > 1:
            setup.append("by method: " + "; ".join(f"{', '.join(ms)}: {', '.join(map(str, s))}"
                                                   for s, ms in groups.items()))
    if meta.get("config_overrides"):
        setup.append("config overrides `" + _compact(meta["config_overrides"]) + "`")
    if setup:
        lines += ["", "Setup: " + "; ".join(setup) + "."]
    ws = meta.get("warmstart")
    if isinstance(ws, dict) and ws:
        items = [f"{k}={_compact(v)}" for k, v in ws.items() if not isinstance(v, (dict, list))][:16]
        if items:
            lines += ["", "Warm start: " + ", ".join(items) + "."]

    lines += ["", "Greedy success (%) per seed after RL:", ""]
    finished = {}
    for method in agg["methods"]:
        parts = []
        for run in agg["runs"][method]:
            if run["complete"]:
                value = _num((run["after"] or {}).get("greedy/success_rate"))
                finished.setdefault(method, []).append(value)
                parts.append(f"seed{run['seed']} {_fmt_value(value, 'rate')}")
            else:
                parts.append(f"seed{run['seed']} ({_run_status(run, its)})")
        lines.append(f"- {method}: " + ("; ".join(parts) if parts else "no runs yet"))
    lines += _against_baseline(finished, agg["methods"])
    for size, ev in agg.get("reeval", {}).items():
        steps = ", ".join(map(str, ev["steps"]))
        lines += ["", f"### Re-evaluated on {size} held-out levels", "",
                  *_table_lines({**agg, "rows": ev["rows"], "warm_start": ev["warm_start"]}), "",
                  f"The same policies and evaluation modes on {size} held-out levels instead of the run's own "
                  f"(`eval_{size}.json` in each run folder, policies of iteration {steps or '?'}: written at the end "
                  f"of a run made with `train.final_eval_levels={size}`, or by `python experiments/reevaluate.py "
                  f"<exp> --eval-levels {size}` from its checkpoints); the warm start is evaluated in each method's "
                  "first seed. A 95% interval on one run's success rate p is about "
                  f"±{196 * math.sqrt(0.25 / size):.0f} points at p = 50% (±{196 * math.sqrt(0.0475 / size):.1f} "
                  "at 95%).", "", "Greedy success (%) per seed, re-evaluated:", ""]
        for method in agg["methods"]:
            parts = [f"seed{seed} {_fmt_value(v, 'rate')}" for seed, v in ev["per_seed"][method]]
            lines.append(f"- {method}: " + ("; ".join(parts) if parts else "not re-evaluated"))
        lines += _against_baseline({m: [v for _, v in ev["per_seed"][m]] for m in agg["methods"]}, agg["methods"])
        lines += levels.section_lines(ev["levels"], agg["methods"], size, BASELINE, ev["warm_levels"])
    skipped = sum(r["skipped_lines"] for m in agg["methods"] for r in agg["runs"][m])
    if skipped:
        lines += ["", f"({skipped} unreadable metrics.jsonl line(s) skipped, e.g. cut by a kill.)"]
    for name, alt in (("curves.png", "curves"), ("eval.png", "eval")):
        if os.path.exists(os.path.join(agg["dir"], name)):
            lines += ["", f"![{alt}]({image_prefix}{name})"]
    return "\n".join(lines) + "\n"


def welch_df(va: float, vb: float, na: int, nb: int) -> float:
    """Welch-Satterthwaite degrees of freedom of a difference of two means whose squared standard errors are
    va and vb (na, nb values); na + nb - 2 where both are 0."""
    if va + vb == 0:
        return float(na + nb - 2)
    return (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean(a) - mean(b), low, high): the difference of two methods' means over seeds with its Welch
    interval (unequal variances; t quantile at the Welch-Satterthwaite degrees of freedom). None with
    fewer than two values on either side (no spread to judge by)."""
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    if len(a) < 2 or len(b) < 2:
        return None
    diff = float(np.mean(a) - np.mean(b))
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    df = welch_df(va, vb, len(a), len(b))
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, df)) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def _against_baseline(per_seed: dict[str, list[float | None]], methods: list[str]) -> list[str]:
    """Lines: each method's greedy success against BASELINE's, in points, with a Welch 95% interval over seeds."""
    base = [v for v in per_seed.get(BASELINE, []) if v is not None]
    if BASELINE not in methods or len(base) < 2:
        return []
    lines = ["", f"Greedy success against {BASELINE}, in points: the difference of the means over seeds with its "
             "Welch 95% interval (an interval that holds 0 does not tell the two apart):", ""]
    for method in methods:
        if method == BASELINE:
            continue
        own = [v for v in per_seed.get(method, []) if v is not None]
        w = welch_interval([100 * v for v in own], [100 * v for v in base])
        lines.append(f"- {method}: " + (f"{w[0]:+.1f} [{w[1]:+.1f}, {w[2]:+.1f}] ({len(own)} vs {len(base)} seeds)"
                                          if w else f"fewer than 2 seeds ({len(own)})"))
    return lines


def _title(agg: dict) -> str:
    return f"{agg['exp']} ({agg['env']})" if agg["env"] else agg["exp"]


# ------------------------------------------------------------------------------------------- plots

def _colors(methods: list[str]) -> dict[str, Any]:
    """One colour per method, the same in every experiment's figure (tab10 by canonical order)."""
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    out, extra = {}, len(METHOD_ORDER)
    for m in methods:
        if m in METHOD_ORDER:
            out[m] = cmap(METHOD_ORDER.index(m))
        else:
            out[m] = cmap(extra % 10)
            extra += 1
    return out


def _save(fig, path: str) -> None:
    """Agg canvas (no pyplot, no global backend change in the runner) and an atomic replace."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    tmp = f"{path}.{os.getpid()}.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def _label(method: str, band: dict, unfinished: int) -> str:
    """Legend text: how many seeds the line averages (unfinished ones stop early)."""
    extra = f", {unfinished} unfinished" if unfinished else ""
    return f"{method} (n={band['n_runs']}{extra})"


def _draw(ax, band: dict, color, label: str, scale: float = 1.0, marker: str | None = None) -> None:
    x = band["steps"]
    ax.plot(x, band["mean"] * scale, color=color, label=label, lw=1.6, marker=marker, ms=4)
    if band["n_runs"] > 1:
        ax.fill_between(x, band["lo"] * scale, band["hi"] * scale, color=color, alpha=0.18, lw=0)


def _plot_curves(agg: dict, path: str) -> bool:
    """Training success rate and mean turns vs iteration; False (nothing written) without records."""
    from matplotlib.figure import Figure
    curves, colors = agg["curves"], _colors(agg["methods"])
    present = [m for m in agg["methods"] if curves[m]["success_rate"] or curves[m]["mean_turns"]]
    if not present:
        return False
    fig = Figure(figsize=(11, 4.4))
    ax1, ax2 = fig.subplots(1, 2)
    for m in present:
        for ax, key, scale in ((ax1, "success_rate", 100.0), (ax2, "mean_turns", 1.0)):
            band = curves[m][key]
            if band:
                _draw(ax, band, colors[m], _label(m, band, curves[m]["unfinished"]), scale)
    ax1.set(xlabel="iteration", ylabel="training success rate (%)", title="training success rate")
    ax2.set(xlabel="iteration", ylabel="mean turns per episode", title="training mean turns")
    ax1.set_ylim(-2, 102)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="best")
    w = agg["window"]
    smooth = f"trailing moving average over {w} iterations" if w > 1 else "no smoothing"
    fig.suptitle(f"{_title(agg)}: mean over seeds, shaded min..max over seeds, {smooth}", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


def _plot_eval(agg: dict, path: str) -> bool:
    """Greedy eval success vs iteration; False when fewer than two eval points exist."""
    from matplotlib.figure import Figure
    bands = {m: agg["curves"][m]["eval"] for m in agg["methods"] if agg["curves"][m]["eval"]}
    steps = set()
    for b in bands.values():
        steps.update(b["steps"].tolist())
    if len(steps) < 2:
        return False
    colors = _colors(agg["methods"])
    fig = Figure(figsize=(6.5, 4.4))
    ax = fig.subplots()
    for m, band in bands.items():
        _draw(ax, band, colors[m], _label(m, band, agg["curves"][m]["unfinished"]), 100.0, marker="o")
    ax.set(xlabel="iteration", ylabel="greedy eval success rate (%)", ylim=(-2, 102))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{_title(agg)}: greedy eval success\nmean over seeds, shaded min..max, no smoothing",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


# ----------------------------------------------------------------------------------------- writers

def _write_text(path: str, text: str) -> None:
    """Atomic: a reader (or a concurrent report) never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _report_experiment(exp_dir: str) -> tuple[dict, str]:
    agg = aggregate(exp_dir)
    for name, plot in (("curves.png", _plot_curves), ("eval.png", _plot_eval)):
        path = os.path.join(agg["dir"], name)
        if not plot(agg, path) and os.path.exists(path):
            os.remove(path)  # stale figure of an earlier layout: the table would link it
    text = f"# {_title(agg)}\n\n" + _experiment_body(agg)
    _write_text(os.path.join(agg["dir"], "table.md"), text)
    return agg, text


def write_experiment_report(exp_dir: str) -> str:
    """Writes ``table.md``, ``curves.png`` and (with >= 2 eval points) ``eval.png`` in `exp_dir`.

    Returns the table.md markdown (table, legend, per-seed values, image links).
    """
    return _report_experiment(exp_dir)[1]


def _flat_rows(agg: dict) -> list[dict]:
    """One flat dict per completed run: after-metrics plus identity; `before/...` for the warm start."""
    out = []
    for method in agg["methods"]:
        for run in agg["runs"][method]:
            if not run["complete"]:
                continue
            ident = {"exp": agg["exp"], "env": agg["env"], "method": method, "seed": run["seed"],
                     "iterations": run["after_step"] if run["after_step"] is not None else agg["iterations"],
                     "seconds": run["seconds"]}
            metrics = dict(run["after"] or {})
            metrics.update({f"before/{k}": v for k, v in run["before"].items()})
            for size, ev in run["reeval"].items():  # the policy evaluated again on more levels
                metrics.update({f"eval{size}/{k}": v for k, v in ev["after"].items()})
            out.append({**ident, **metrics, **ident})
    return out


def _is_experiment_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "experiment.json")) or bool(_method_dirs(path))


def _experiment_dirs(results_dir: str, suite: dict) -> list[str]:
    names = [n for n in os.listdir(results_dir)
             if not n.startswith(".") and os.path.isdir(os.path.join(results_dir, n))
             and _is_experiment_dir(os.path.join(results_dir, n))]
    listed = suite.get("experiments") if isinstance(suite.get("experiments"), (dict, list)) else []
    listed = [n for n in listed if isinstance(n, str) and n in names]
    return listed + sorted(n for n in names if n not in listed)


def _format_started(v: Any) -> str:
    if _num(v) is not None:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(v)))
    return str(v)


def _overview(aggs: list[dict]) -> list[str]:
    """Greedy success per method x experiment: the headline comparison in one table."""
    methods = []
    for agg in aggs:
        methods += [m for m in agg["methods"] if m not in methods]
    header = "| method | " + " | ".join(_md_escape(_title(a)) for a in aggs) + " |"
    lines = [header, "| --- |" + " ---: |" * len(aggs)]
    warm = [_fmt_cell(a["warm_start"]["cells"]["success"], "rate", a["warm_start"]["n"]) for a in aggs]
    lines.append(f"| *{WARM_START_ROW}* | " + " | ".join(warm) + " |")
    for m in methods:
        cells = []
        for a in aggs:
            row = a["rows"].get(m)
            cells.append(f"{_fmt_cell(row['cells']['success'], 'rate', row['n'])} (n={row['n']})"
                         if row and row["n"] else "-")
        lines.append(f"| {_md_escape(m)} | " + " | ".join(cells) + " |")
    return lines


def read_suite_meta(path: str) -> dict:
    """suite.json as a dict ({} when absent or unreadable)."""
    meta = read_json(path)
    return meta if isinstance(meta, dict) else {}


def write_report(results_dir: str) -> str:
    """Reports every experiment under `results_dir`; writes results.jsonl and summary.md.

    Returns the path of summary.md. Raises ReportError when the directory is missing or holds no
    experiment (``<exp>/experiment.json`` or ``<exp>/<method>/seed<k>/``).
    """
    if not os.path.isdir(results_dir):
        raise ReportError(f"results directory not found: {results_dir}")
    results_dir = os.path.abspath(results_dir)
    suite = read_suite_meta(os.path.join(results_dir, "suite.json"))
    names = _experiment_dirs(results_dir, suite)
    if not names:
        raise ReportError(f"no experiment results in {results_dir} (expected "
                          f"{results_dir}/<exp>/experiment.json or <exp>/<method>/seed<k>/metrics.jsonl)")
    aggs = [_report_experiment(os.path.join(results_dir, n))[0] for n in names]

    rows = [r for agg in aggs for r in _flat_rows(agg)]
    _write_text(os.path.join(results_dir, "results.jsonl"),
                "".join(json.dumps(r, default=str) + "\n" for r in rows))

    title = f"Results: suite {suite['suite']}" if suite.get("suite") else "Results"
    lines = [f"# {title}", ""]
    if suite.get("command"):
        lines += ["Command:", "", "```", str(suite["command"]), "```", ""]
    info = []
    if suite.get("started") is not None:
        info.append(f"started {_format_started(suite['started'])}")
    if suite.get("machine"):
        info.append(f"machine: {suite['machine']}")
    if info:
        text = "; ".join(info)
        lines += [text[0].upper() + text[1:] + ".", ""]
    history = [h for h in (suite.get("history") or []) if isinstance(h, dict) and h.get("command")]
    if history:  # earlier commands that wrote into this directory (each resumes or adds experiments)
        lines += ["Earlier commands into this directory:", ""]
        for h in history:
            when = [f"started {_format_started(h['started'])}"] if h.get("started") is not None else []
            if isinstance(h.get("seconds"), (int, float)):
                when.append(f"{h['seconds'] / 60:.0f} min")
            lines.append(f"- `{h['command']}`" + (f" ({', '.join(when)})" if when else ""))
        lines.append("")
    missing = [n for n in (suite.get("experiments") or []) if isinstance(n, str) and n not in names]
    if missing:
        lines += ["Not started yet: " + ", ".join(missing) + ".", ""]
    lines += [f"{len(rows)} completed run(s); raw final numbers, one JSON line per run: "
              "[results.jsonl](results.jsonl) (`pandas.read_json(path, lines=True)`).", "",
              "## Overview: greedy success after RL (%)", ""] + _overview(aggs) + [""]
    for agg in aggs:
        lines += [f"## {_title(agg)}", "", _experiment_body(agg, image_prefix=f"{agg['exp']}/")]
    path = os.path.join(results_dir, "summary.md")
    _write_text(path, "\n".join(lines).rstrip("\n") + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tables, curves, results.jsonl and summary.md for an experiment results directory.")
    parser.add_argument("results_dir", help="e.g. experiments/results/quick")
    args = parser.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")  # headless; the library functions never touch pyplot anyway
    try:
        path = write_report(args.results_dir)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
