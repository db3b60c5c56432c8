"""Runs an experiment suite: for each environment, one shared warm start, then every method x seed.

    python experiments/run.py --suite quick            # Maze 5x5, 5 methods x 3 seeds, 10 iterations
    python experiments/run.py --suite full             # Maze 5x5, Sokoban 6x6 and Standard, Taxi
    python experiments/run.py --suite full --experiments maze5   # ~2 h measured on 2 CPU cores
    python experiments/run.py --suite full --experiments maze5 --methods wmact,interactive --seeds 0,1
    python experiments/run.py --suite quick --set rollout.levels_per_iteration=64 --set train.iterations=200

Outputs go to experiments/results/<suite>/ (or --out): per experiment a `warmstart/` policy, one run
directory per method and seed (the same layout as `python -m wmact_jax.main`: metrics.jsonl,
TensorBoard, checkpoints, transcripts) with a `final.json`, then `table.md`, `curves.png` and
`eval.png`; across experiments `results.jsonl` and `summary.md` (experiments/report.py).

Re-running the same command resumes: a finished run (final.json present) is skipped, a killed one
continues from its last checkpoint, and the warm start is reused. Every method of an experiment
starts from the same warm-started policy and gets the same budget; seeds change the RL randomness.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import report, suites  # noqa: E402
from wmact_jax import config_check  # noqa: E402  (light: no jax)


def parse_sets(items) -> dict:
    """['a.b=1', 'c.d=x'] -> {'a.b': 1, 'c.d': 'x'} (Python literals, else strings)."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def apply(config, overrides: dict):
    """Sets dotted fields; an unknown field is an error naming it (before any work starts)."""
    from wmact_jax.config_check import ConfigError, set_field

    for path, value in overrides.items():
        try:
            set_field(config, path, value)
        except ConfigError as e:
            raise SystemExit(f"error: {e}") from None
    return config


def method_sets(sets: dict, method: str) -> dict:
    """The --set overrides that apply to `method`'s runs. An override is meant for every run of the
    suite, so it does not reach a field that defines a method: `--set anneal.l0=10` gives the
    multi-turn methods 10 turns, and entire_plan keeps its one turn holding the whole plan."""
    return {k: v for k, v in sets.items() if k not in config_check.defining_fields(method)}


def experiment_config(exp: str, suite: str, sets: dict, method: str = "interactive", seed: int = 0):
    """The config of one run (before `resolve_method`): default -> experiment -> suite -> method -> --set
    (the overrides of `method_sets`)."""
    from configs import default

    spec = suites.EXPERIMENTS[exp]
    c = default.get_config()
    c.env.name = spec["env"]
    c.env.eval_names = tuple(spec["transfer"])
    apply(c, suites.COMMON)
    apply(c, spec["overrides"])
    apply(c, suites.SUITES[suite]["overrides"])
    c.method, c.seed = method, int(seed)
    apply(c, method_sets(sets, method))
    # An answer's room in tokens follows the actions it may hold, after every override: `--set
    # rollout.max_actions=40` gives entire_plan's one answer room for 40 (it kept the experiment's 20
    # until 2026-12-05); `--set rollout.max_turn_tokens` (or a suite's) is kept as given.
    if "rollout.max_turn_tokens" not in {**suites.SUITES[suite]["overrides"], **sets}:
        if method == "entire_plan":
            apply(c, suites.entire_plan_overrides(c.rollout.max_actions))
        else:
            c.rollout.max_turn_tokens = suites.turn_tokens(c.rollout.max_actions_per_turn)
    return c


def recorded_overrides(exp: str, suite: str, sets: dict) -> dict:
    """The settings an experiment's runs share beyond the defaults, as experiment.json records them."""
    sample = experiment_config(exp, suite, sets)
    extend = warmstart_stages(suite, exp)[1:]
    src = warmstart_source(exp, sets)
    return _as_json({**suites.COMMON, **suites.EXPERIMENTS[exp]["overrides"],
                     "rollout.max_turn_tokens": int(sample.rollout.max_turn_tokens),
                     **suites.SUITES[suite]["overrides"], **sets,
                     **({"warmstart_from": src} if src else {}),
                     **({"warmstart_extend": extend} if extend else {})})


def _as_json(x):
    return json.loads(json.dumps(x, default=str))


# What is evaluated and logged, not how a run trains: the evaluations draw their levels from a key stream
# of their own (`Trainer.eval_key`), so runs that differ only here are the same training runs. A command
# may add seeds to a folder with these changed (e.g. an evaluation mode the earlier seeds lack: the
# table's cell then says over how many seeds, `(n=k)`).
EVALUATION_ONLY = ("train.eval_modes", "train.transcripts", "train.final_eval_levels")


def _changes(exp_dir: str, overrides: dict, evaluation: bool) -> list[str]:
    """How `overrides` differ from the settings recorded for the runs already in `exp_dir`, one line per
    field: the EVALUATION_ONLY fields (evaluation=True) or every other one."""
    prev = report.read_json(os.path.join(exp_dir, "experiment.json"))
    old = prev.get("config_overrides") if isinstance(prev, dict) else None
    if not isinstance(old, dict) or old == overrides:
        return []
    return [f"{k}: {a!r} there, {b!r} now" for k, a, b in config_check.differences(old, overrides)
            if (k in EVALUATION_ONLY) == evaluation]


def evaluation_changes(exp_dir: str, overrides: dict) -> list[str]:
    """The EVALUATION_ONLY settings in which `overrides` differ from the runs already in `exp_dir`."""
    return _changes(exp_dir, overrides, evaluation=True)


def settings_conflict(exp_dir: str, overrides: dict) -> str | None:
    """Why runs made with `overrides` may not join the runs already in `exp_dir` (None if they may).

    A results folder's table pools the seeds of each method and records one set of settings; runs of
    another setting added to it would be averaged in under the wrong record. Settings of the evaluation
    alone (`EVALUATION_ONLY`) may differ."""
    diff = _changes(exp_dir, overrides, evaluation=False)
    if not diff:
        return None
    return (f"{exp_dir} holds runs made with other settings ({'; '.join(diff)}); "
            "write these runs to another --out")


def warmstart_stages(suite: str, exp: str) -> list[dict]:
    """The overrides of each stage of an experiment's warm start in a suite: the first stage has none;
    each further stage (`warmstart_extend` in the suite: a tuple for every experiment, or a dict of
    tuples by experiment) trains from the previous stage's policy (`warmstart.init`) with its own
    optimizer and schedule, the two-command recipe of a warm start extended as one."""
    extend = suites.SUITES[suite].get("warmstart_extend", ())
    if isinstance(extend, dict):
        extend = extend.get(exp, ())
    return [{}] + [dict(s) for s in extend]


def warmstart_folders(exp_dir: str, suite: str, exp: str) -> list[str]:
    """Where each stage is saved: the last in `warmstart/` (what the runs start from), earlier ones
    in `warmstart_stage1/`, `warmstart_stage2/`, ..."""
    n = len(warmstart_stages(suite, exp))
    return [os.path.join(exp_dir, "warmstart" if i == n - 1 else f"warmstart_stage{i + 1}") for i in range(n)]


def warmstart_config(exp: str, suite: str, sets: dict, seed: int = 0, stage: int = 0, init: str = ""):
    """The config of (a stage of) an experiment's shared warm start: its demos include the one-turn
    whole plans entire_plan starts from. A later stage's overrides win over --set (they define it).
    init: the policy the stage trains from (the previous stage's, or for the first stage the warm start
    of the experiment's `warmstart_from`)."""
    c = experiment_config(exp, suite, sets, method="interactive", seed=seed)
    c.warmstart.single_turn_fraction = suites.WARMSTART_SINGLE_TURN_FRACTION
    if stage:
        apply(c, warmstart_stages(suite, exp)[stage])
    if stage or init:  # a first stage without one keeps --set warmstart.init
        c.warmstart.init = init
    return c


def warmstart_source(exp: str, sets: dict) -> str | None:
    """The experiment whose warm start this one's first stage trains from (`warmstart_from` in
    suites.EXPERIMENTS), unless --set warmstart.init names a folder of the user's own."""
    src = suites.EXPERIMENTS[exp].get("warmstart_from")
    return None if "warmstart.init" in sets else src


def warm_start(exp: str, suite: str, sets: dict, exp_dir: str) -> tuple[str, dict, bool]:
    """The experiment's shared warm start (trained once, then reused; stage by stage when the suite
    extends it): -> (folder of the last stage, its metrics, reused). The metrics' `warmstart/seconds`
    is the time of every stage."""
    from wmact_jax.train import Trainer
    from wmact_jax.warmstart import METRICS_FILE, initial_params, run_warmstart, save_warmstart

    stages, folders = warmstart_stages(suite, exp), warmstart_folders(exp_dir, suite, exp)
    # The runs start from the last stage: kept alone (e.g. copied from a results folder), it is used as is.
    last_kept = os.path.exists(os.path.join(folders[-1], METRICS_FILE))
    seconds, reused, prev = 0.0, True, None
    src = warmstart_source(exp, sets)
    if src and not last_kept and not os.path.exists(os.path.join(folders[0], METRICS_FILE)):
        # The first stage trains from another experiment's warm start (trained first if missing; a
        # suite that also runs that experiment then reuses it): the folder beside this experiment's.
        prev, _, _ = warm_start(src, suite, sets, os.path.join(os.path.dirname(exp_dir), src))
    for stage, (extra, folder) in enumerate(zip(stages, folders)):
        info_path = os.path.join(folder, METRICS_FILE)
        if os.path.exists(info_path):
            with open(info_path) as f:
                metrics = json.load(f)["metrics"]
        elif last_kept:
            continue
        else:
            reused = False
            explicit = set(sets) | set(extra) | ({"warmstart.init"} if prev else set())
            c = config_check.prepare_config(warmstart_config(exp, suite, sets, stage=stage, init=prev),
                                            explicit=explicit)
            what = ", ".join(([f"stage {stage + 1}"] if len(stages) > 1 else []) + ([f"from {prev}"] if prev else []))
            print(f"[{exp}] warm start on {c.env.name}: {c.warmstart.steps} steps {what}".rstrip(), flush=True)
            trainer = Trainer(c)
            params, metrics = run_warmstart(trainer, initial_params(trainer))
            save_warmstart(folder, trainer, params, metrics, overwrite=True)
        seconds += float(metrics.get("warmstart/seconds", 0.0))
        prev = folder
    return folder, {**metrics, "warmstart/seconds": seconds}, reused


class TrainerPool:
    """Trainers for the runs of one experiment, one per distinct program: a run that differs from an
    earlier one only in seed and method switches gets that trainer rebound to its config
    (`Trainer.rebind`), so the experiment traces and compiles each program once, not once per run."""

    def __init__(self):
        self.trainers = []

    def __call__(self, config, workdir):
        from wmact_jax.train import Trainer

        for t in self.trainers:
            try:
                return t.rebind(config, workdir)
            except ValueError:
                continue
        t = Trainer(config, workdir)
        self.trainers.append(t)
        return t


def run_one(exp: str, suite: str, sets: dict, method: str, seed: int, warm: str, run_dir: str,
            first_seed: bool = True, pool: TrainerPool | None = None) -> dict:
    from wmact_jax.main import run

    c = experiment_config(exp, suite, sets, method=method, seed=seed)
    c.warmstart.enabled, c.warmstart.path = False, warm
    # Before RL every seed of a method sees the same policy and the same held-out levels: evaluate once.
    c.train.eval_before = first_seed
    t0 = time.time()
    out = run(c, run_dir, explicit=method_sets(sets, method).keys(), progress=False, trainer_cls=pool)
    final = {"before": out["before"], "after": out["after"], "seconds": time.time() - t0,
             "method": method, "seed": seed, "env": c.env.name}
    tmp = os.path.join(run_dir, "final.json.tmp")
    with open(tmp, "w") as f:
        json.dump(final, f, indent=1, default=str)
    os.replace(tmp, os.path.join(run_dir, "final.json"))
    return final


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(suites.SUITES), default="quick")
    ap.add_argument("--out", default=None, help="results folder (default experiments/results/<suite>)")
    ap.add_argument("--experiments", default=None, help=f"comma list from {sorted(suites.EXPERIMENTS)}")
    ap.add_argument("--methods", default=None, help=f"comma list (default {','.join(suites.METHODS)}; also "
                    f"the ablations {','.join(m for m in config_check.METHODS if m not in suites.METHODS)})")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (default the suite's)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="config override for every run, e.g. --set train.iterations=100")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    suite = suites.SUITES[args.suite]
    exps = args.experiments.split(",") if args.experiments else list(suite["experiments"])
    methods = args.methods.split(",") if args.methods else list(suites.METHODS)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(suite["seeds"])
    for name, known, what in ((exps, suites.EXPERIMENTS, "experiment"), (methods, config_check.METHODS, "method")):
        bad = [n for n in name if n not in known]
        if bad:
            print(f"error: unknown {what} {bad}; known: {sorted(known)}", file=sys.stderr)
            return 2
    sets = parse_sets(args.set)
    if "seed" in sets:  # it would replace every run's seed: --seeds 0,1,2 would pool three copies of one run
        print("error: --set seed would give every run the same seed; use --seeds for the runs' seeds and "
              "--set warmstart.seed=N for the shared warm start's", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out or os.path.join(ROOT, "experiments", "results", args.suite))
    os.makedirs(out, exist_ok=True)

    # Validate every run's config before any training (a typo fails in a second, not after an hour).
    for exp in exps:
        for m in methods:
            try:
                config_check.prepare_config(experiment_config(exp, args.suite, sets, m, seeds[0]),
                                            method_sets(sets, m).keys())
            except config_check.ConfigError as e:
                print(f"error: {exp}/{m}: {e}", file=sys.stderr)
                return 2
        for stage, extra in enumerate(warmstart_stages(args.suite, exp)[1:], start=1):
            try:
                config_check.prepare_config(warmstart_config(exp, args.suite, sets, stage=stage),
                                            set(sets) | set(extra))
            except config_check.ConfigError as e:
                print(f"error: {exp}/warm start stage {stage + 1}: {e}", file=sys.stderr)
                return 2
    for exp in exps:
        overrides = recorded_overrides(exp, args.suite, sets)
        if why := settings_conflict(os.path.join(out, exp), overrides):
            print(f"error: {exp}: {why}", file=sys.stderr)
            return 2
        if changed := evaluation_changes(os.path.join(out, exp), overrides):
            print(f"note: {exp}: these runs are evaluated otherwise than the folder's earlier ones "
                  f"({'; '.join(changed)}); the table counts each column over the seeds that have it, "
                  "and each run's config.json records its own", flush=True)
    for m in methods:
        if dropped := sorted(set(sets) - set(method_sets(sets, m))):
            print(f"note: --set {', '.join(dropped)} not applied to {m} (it defines the method)", flush=True)

    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint save at INFO
    # Every seed, and every multi-turn method (their differences are traced arguments: Trainer.switches),
    # runs the same compiled iteration: a persistent cache compiles it once per experiment. A cache the
    # caller has open already (JAX_COMPILATION_CACHE_DIR; the test session's) is kept: it serves more.
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                 "jax_persistent_cache_min_compile_time_secs")}
    if not saved["jax_compilation_cache_dir"]:
        jax.config.update("jax_compilation_cache_dir", os.path.join(out, ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        return _run_suite(args, exps, methods, seeds, sets, out)
    finally:  # a caller (e.g. a test process) keeps its own settings
        for k, v in saved.items():
            jax.config.update(k, v)


def cpu_name() -> str:
    """The CPU's model and widest x86 vector extension ("Intel(R) Xeon(R) Processor, avx512f"): XLA's CPU
    code, hence the float rounding, follows them, and a run that samples its episodes goes its own way
    from the first differing bit (docs/EXPERIMENTS.md: the same seed re-run on another machine)."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("unknown CPU", platform.machine()):
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = next((x for x in ("avx512f", "avx2", "avx", "neon", "asimd") if x in flags), "")
    return f"{name}, {isa}" if isa else name


def _run_suite(args, exps, methods, seeds, sets, out) -> int:
    import jax

    command = "python experiments/run.py " + " ".join(args.argv)
    meta_path = os.path.join(out, "suite.json")
    meta = {"suite": args.suite, "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
                       f"({jax.default_backend()})", "experiments": {}, "history": []}
    prev = report.read_suite_meta(meta_path)
    if prev.get("suite") == args.suite:  # an earlier command wrote into this directory: keep its record
        meta["history"] = list(prev.get("history") or []) + [
            {k: prev[k] for k in ("command", "started", "seconds", "experiments") if k in prev}]
        meta["experiments"].update(prev.get("experiments") or {})
    t_suite = time.time()
    for exp in exps:
        exp_dir = os.path.join(out, exp)
        os.makedirs(exp_dir, exist_ok=True)
        t0 = time.time()
        warm, wmetrics, reused = warm_start(exp, args.suite, sets, exp_dir)
        sample = experiment_config(exp, args.suite, sets)
        prev = report.read_json(os.path.join(exp_dir, "experiment.json"))
        prev = prev if isinstance(prev, dict) else {}
        # A reused warm start keeps the time it took when it was trained (not the second it took to find).
        if reused:
            seconds = wmetrics.get("warmstart/seconds", prev.get("warmstart_seconds"))
        elif len(warmstart_stages(args.suite, exp)) > 1:  # the stages' own times (an earlier one may be reused)
            seconds = wmetrics["warmstart/seconds"]
        else:
            seconds = time.time() - t0
        exp_info = {"env": sample.env.name, "transfer": list(sample.env.eval_names), "methods": methods,
                    "seeds": seeds, "method_seeds": {m: list(seeds) for m in methods},
                    "iterations": int(sample.train.iterations),
                    "episodes_per_iteration": int(sample.rollout.levels_per_iteration * sample.rollout.group_size),
                    "eval_levels": int(sample.train.eval_levels), "warmstart": wmetrics,
                    "warmstart_seconds": seconds, "warmstart_reused": reused,
                    "config_overrides": recorded_overrides(exp, args.suite, sets)}
        # Commands that add methods or seeds to this directory extend its record (the table counts
        # every seed run, not only the last command's).
        # Seeds are kept per method too: seeds added to two methods do not make the others look unfinished.
        if isinstance(prev.get("methods"), list) and isinstance(prev.get("seeds"), list):
            exp_info["methods"] = prev["methods"] + [m for m in methods if m not in prev["methods"]]
            exp_info["seeds"] = sorted(set(prev["seeds"]) | set(seeds))
            # A record from before method_seeds: every method it lists had every seed it lists.
            old = prev.get("method_seeds") if isinstance(prev.get("method_seeds"), dict) else {
                m: prev["seeds"] for m in prev["methods"]}
            exp_info["method_seeds"] = {m: sorted(set(old.get(m, [])) | set(seeds if m in methods else []))
                                        for m in exp_info["methods"]}
        with open(os.path.join(exp_dir, "experiment.json"), "w") as f:
            json.dump(exp_info, f, indent=1, default=str)
        meta["experiments"][exp] = exp_info["env"]
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
        # Seeds outer, methods inner: a suite stopped early still has every method at its first seeds.
        pool = TrainerPool()
        for s in seeds:
            for m in methods:
                run_dir = os.path.join(exp_dir, m, f"seed{s}")
                if os.path.exists(os.path.join(run_dir, "final.json")):
                    continue
                t = time.time()
                final = run_one(exp, args.suite, sets, m, s, warm, run_dir, first_seed=s == seeds[0], pool=pool)
                a = final["after"]["metrics"]
                print(f"[{exp}] {m} seed {s}: greedy success {a.get('greedy/success_rate', float('nan')):.3f}, "
                      f"turns {a.get('greedy/mean_turns', float('nan')):.2f} ({time.time() - t:.0f} s)", flush=True)
                report.write_experiment_report(exp_dir)  # partial results are readable while the suite runs
        report.write_experiment_report(exp_dir)
    meta["seconds"] = time.time() - t_suite
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    summary = report.write_report(out)
    print(f"suite {args.suite} done in {meta['seconds'] / 60:.1f} min: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
