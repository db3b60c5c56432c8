"""Evaluates the kept policies of an experiment's runs again, on more held-out levels.

    python experiments/reevaluate.py RESULTS/<exp> [--eval-levels 256] [--methods wmact,anneal]

A suite evaluates each run on `train.eval_levels` held-out levels (48 in the full suite: a 95% interval
of about +-10 points on one run's success rate), which is too few to tell methods 5 points apart. This
reads each run directory's latest checkpoint (the policy after RL) with the run's own config
(config.json), evaluates it in the run's own modes (greedy and sampled at its final turn cap, a single
turn, the starting cap L_0 where the cap anneals; transfer environments with `--transfer`) on
`--eval-levels` levels, and writes `<run>/eval_<N>.json`. The warm start (each run's checkpoint 0) is
evaluated the same way in the first seed of each method (each method's prompt format). The levels are
the evaluation's own (`Trainer.eval_key()`), the same for every run; the first 48 of 256 are the suite's
48 (JAX's partitionable key split: the i-th key does not depend on the count). experiments/report.py
adds a table of these files to the experiment's table.md. A run made with `train.final_eval_levels=N`
(the full suite's 256) wrote its own `eval_<N>.json` (wmact_jax.main): this is for runs made without.

Each mode's per-level episodes are kept beside its metrics (`levels`: solved, turns, actions, N_eff, end,
the oracle's optimal length; `Trainer.evaluate_levels`): every run is scored on the same levels, so
experiments/levels.py can split a method's spread over seeds into the levels' share and the training's.

Unfinished runs (no final.json) and runs without checkpoints (a published folder keeps none) are listed
and skipped; a run whose file already holds its latest checkpoint's evaluation at that size, per-level
records included, is skipped too (`--force` redoes it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def open_run(run_dir: str, eval_levels: int | None = None, trainer_cls=None):
    """(trainer, restore, steps, config) of `run_dir`: the Trainer built from the run's own config.json
    (config.json read and the checkpoints opened once), with `train.eval_levels` set to `eval_levels`
    when given; `restore(step)` the run's state at a saved iteration (0 is the warm start, before RL);
    `steps` the saved iterations, ascending. trainer_cls: a `(config, workdir) -> Trainer` factory
    (experiments/run.py's TrainerPool shares compiled programs across runs). A missing config or
    checkpoint is a SystemExit naming it."""
    import jax

    from wmact_jax.checkpointing import Checkpointer
    from wmact_jax.config_check import config_from_saved

    cfg_path, ckpt_dir = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "checkpoints")
    if not os.path.isfile(cfg_path):
        raise SystemExit(f"{run_dir}: no config.json (not a run directory)")
    if not os.path.isdir(ckpt_dir):
        raise SystemExit(f"{run_dir}: no checkpoints/ (a results folder keeps none: re-run its command)")
    with open(cfg_path) as f:
        saved = json.load(f)
    ckpt = Checkpointer(ckpt_dir, saved)
    steps = sorted(ckpt.all_steps())
    if not steps:
        raise SystemExit(f"{run_dir}: no checkpoint in {ckpt_dir}")
    config = config_from_saved(saved)
    if eval_levels:
        config.train.eval_levels = int(eval_levels)
    config.train.transcripts = 0
    if trainer_cls is None:
        from wmact_jax.train import Trainer as trainer_cls
    tr = trainer_cls(config, "")
    abstract = jax.eval_shape(tr.init_state, jax.random.key(0))

    def restore(step: int):
        if step not in steps:
            raise SystemExit(f"{run_dir}: no checkpoint at iteration {step} (it has {steps})")
        return ckpt.restore(abstract, step)

    return tr, restore, steps, config


def restore_run(run_dir: str, eval_levels: int | None = None, step: int | None = None, trainer_cls=None):
    """(trainer, state, step, config) of `run_dir` at checkpoint `step` (default: its latest), as
    `open_run` builds them."""
    tr, restore, steps, config = open_run(run_dir, eval_levels, trainer_cls)
    step = steps[-1] if step is None else step
    return tr, restore(step), step, config


def run_dirs(exp_dir: str, methods: list[str] | None) -> list[tuple[str, str, str]]:
    """[(method, seed folder name, path)] of an experiment folder, methods in folder order."""
    from experiments.report import _method_dirs, seed_dirs

    out = []
    for method in _method_dirs(exp_dir):
        if methods and method not in methods:
            continue
        mdir = os.path.join(exp_dir, method)
        out += [(method, s, os.path.join(mdir, s)) for s in seed_dirs(mdir)]
    if methods:
        missing = sorted(set(methods) - {m for m, _, _ in out})
        if missing:
            raise SystemExit(f"{exp_dir}: no runs of method(s) {', '.join(missing)}")
    return out


def reevaluate(exp_dir: str, eval_levels: int, methods: list[str] | None = None, transfer: bool = False,
               force: bool = False, before: bool = True, log=print) -> list[str]:
    """Writes eval_<N>.json in every run of `exp_dir` with checkpoints; returns the files written.
    before: also the warm start (checkpoint 0) in each method's first seed."""
    from experiments.run import TrainerPool
    from wmact_jax.main import _saved_steps, _write_json, eval_levels_file, eval_levels_record, evaluate_modes

    pool = TrainerPool()
    written, seen_method = [], set()
    for method, seed, run_dir in run_dirs(exp_dir, methods):
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        if not os.path.isfile(os.path.join(run_dir, "final.json")):
            log(f"{method}/{seed}: unfinished (no final.json), skipped")  # a policy mid-training
            continue
        if not os.path.isdir(ckpt_dir):
            log(f"{method}/{seed}: no checkpoints/, skipped")
            continue
        steps = _saved_steps(ckpt_dir)  # the folder names: enough to skip a done run without opening Orbax
        # The warm start in the first seed of each method that is evaluated, if its checkpoint 0 was kept.
        first = before and method not in seen_method and 0 in steps
        seen_method.add(method)
        path = eval_levels_file(run_dir, eval_levels)
        old = None
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
        latest = steps[-1] if steps else None
        done = old and old.get("after", {}).get("step") == latest and old["after"].get("levels")
        if done and not force and (old.get("before") or not first):
            log(f"{method}/{seed}: {path} holds iteration {latest} already, skipped")
            continue
        t0 = time.time()
        trainer, restore, saved, config = open_run(run_dir, eval_levels, trainer_cls=pool)
        step = saved[-1]
        def evaluated(at: int) -> dict:
            metrics, levels = evaluate_modes(trainer, restore(at), config, transfer)
            return {"step": at, "metrics": metrics, "levels": levels}

        after = evaluated(step)
        warm = evaluated(0) if first and step != 0 else None  # the warm start in this method's prompt format
        result = eval_levels_record(eval_levels, method, after, warm, time.time() - t0)
        _write_json(path, result, compact_lists=True)
        written.append(path)
        m = result["after"]["metrics"]
        log(f"{method}/{seed}: iteration {step}, greedy {100 * m.get('greedy/success_rate', float('nan')):.1f}%, "
            f"sampled {100 * m.get('sampled/success_rate', float('nan')):.1f}% on {eval_levels} levels "
            f"({result['seconds']:.0f} s) -> {path}")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="+", help="experiment folders (RESULTS/<exp>, holding <method>/seed<k>/)")
    ap.add_argument("--eval-levels", type=int, default=256)
    ap.add_argument("--methods", help="comma-separated methods (default: every method folder)")
    ap.add_argument("--transfer", action="store_true", help="also the runs' transfer environments")
    ap.add_argument("--force", action="store_true", help="evaluate again where eval_<N>.json exists")
    ap.add_argument("--no-before", action="store_true", help="leave the warm start (checkpoint 0) out")
    ap.add_argument("--no-report", action="store_true", help="leave table.md as it is")
    a = ap.parse_args(argv)
    if a.eval_levels < 1:
        ap.error(f"--eval-levels must be positive, got {a.eval_levels}")
    methods = [m for m in (a.methods or "").split(",") if m] or None
    for exp_dir in a.experiments:
        if not os.path.isdir(exp_dir):
            ap.error(f"not a folder: {exp_dir}")
        reevaluate(exp_dir, a.eval_levels, methods, a.transfer, a.force, not a.no_before)
        if not a.no_report:
            from experiments import report

            parent = os.path.dirname(os.path.abspath(exp_dir))
            if any(os.path.exists(os.path.join(parent, f)) for f in ("suite.json", "results.jsonl")):
                report.write_report(parent)  # a suite's folder: its summary.md and results.jsonl too
                print(f"{parent}: reports updated")
            else:
                report.write_experiment_report(exp_dir)
                print(f"{os.path.join(exp_dir, 'table.md')} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
