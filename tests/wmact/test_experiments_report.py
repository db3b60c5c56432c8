"""experiments/report.py on a synthetic results directory (no training, no jax: a few seconds).

Two experiments x 3 methods x 2-3 seeds; one run was killed (no final.json, a cut last line).
Checked: a hand-computed mean ± std cell, seed counts, the killed run, valid PNGs, results.jsonl,
summary.md's links, and a clear exit 2 on an empty or missing directory.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "report.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ITERS = 10


def _load_module():
    spec = importlib.util.spec_from_file_location("experiments_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_module()


def _eval(prefix, success, turns=3.0, gap=0.5, transfer=(), single=None, cycled=None):
    m = {f"{prefix}greedy/success_rate": success, f"{prefix}greedy/mean_turns": turns,
         f"{prefix}greedy/mean_actions": 1.5 * turns,
         f"{prefix}greedy/efficacy": 0.8, f"{prefix}greedy/format_error_rate": 0.0,
         f"{prefix}greedy/turn_cap": 8, f"{prefix}sampled/success_rate": success / 2,
         f"{prefix}single_turn/success_rate": success / 2 if single is None else single}
    if gap is not None:
        m[f"{prefix}greedy/optimality_gap"] = gap
    for env in transfer:
        m[f"{prefix}transfer/{env}/success_rate"] = success / 4
    if cycled is not None:
        m[f"{prefix}greedy/cycled"] = cycled
    return m


def _write_run(run_dir, final_success, *, transfer=(), gap=0.5, complete=True, seed=0, steps=ITERS, cycled=None):
    os.makedirs(run_dir)
    rng = np.random.default_rng(seed)
    lines = [{"step": 0, "time": 0.0, "warmstart/loss": 1.2},
             {"step": 0, "time": 1.0, **_eval("eval/", 0.25, transfer=transfer)}]
    for it in range(1, steps + 1):
        success = min(1.0, 0.25 + 0.04 * it + 0.05 * rng.random())
        lines.append({"step": it, "time": 1.0 + it, "success_rate": success,
                      "mean_turns": 5.0 - 0.2 * it, "efficacy": 0.7, "perf/iteration_seconds": 1.0,
                      "ppo/loss": None})
        if it % 5 == 0:
            lines.append({"step": it, "time": 1.5 + it,
                          **_eval("eval/", final_success if it == ITERS else 0.3, transfer=transfer)})
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines))
        if not complete:
            f.write('{"step": %d, "time": 99.0, "success_ra' % (steps + 1))  # killed mid-write
    if complete:
        final = {"before": {"step": 0, "metrics": _eval("", 0.25, transfer=transfer)},
                 "after": {"step": ITERS, "metrics": _eval("", final_success, gap=gap, transfer=transfer,
                                                           cycled=cycled)},
                 "seconds": 12.5}
        with open(os.path.join(run_dir, "final.json"), "w") as f:
            json.dump(final, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("results"))
    with open(os.path.join(root, "suite.json"), "w") as f:
        json.dump({"suite": "quick", "command": "python experiments/run.py --suite quick",
                   "started": 1700000000.0, "machine": "test box",
                   "experiments": {"maze7": {}, "sokoban6": {}}}, f)
    # maze7: experiment.json lists the order (wmact first) and 3 seeds; rescale seed2 was killed.
    maze = os.path.join(root, "maze7")
    os.makedirs(maze)
    with open(os.path.join(maze, "experiment.json"), "w") as f:
        json.dump({"env": "Maze-7x7", "transfer": ["Maze-9x9"],
                   "methods": ["wmact", "interactive", "rescale"], "seeds": [0, 1, 2], "iterations": ITERS,
                   "warmstart": {"warmstart/loss": 1.2}, "config_overrides": {"train.batch": 8}}, f)
    for seed, s in enumerate([0.5, 0.6, 0.7]):
        _write_run(os.path.join(maze, "wmact", f"seed{seed}"), s, transfer=["Maze-9x9"], seed=seed)
    for seed, s in enumerate([0.4375, 0.5, 0.45]):
        # interactive seed1 solved nothing useful: no optimality gap in its metrics
        _write_run(os.path.join(maze, "interactive", f"seed{seed}"), s, transfer=["Maze-9x9"],
                   gap=None if seed == 1 else 0.5, seed=seed)
    _write_run(os.path.join(maze, "rescale", "seed0"), 0.2, transfer=["Maze-9x9"])
    _write_run(os.path.join(maze, "rescale", "seed1"), 0.3, transfer=["Maze-9x9"], seed=1)
    _write_run(os.path.join(maze, "rescale", "seed2"), 0.0, transfer=["Maze-9x9"], complete=False,
               steps=6, seed=2)
    # sokoban6: no experiment.json (fixed method order), two seeds.
    soko = os.path.join(root, "sokoban6")
    for method, vals in (("wmact", [0.3, 0.5]), ("interactive", [0.2, 0.2]), ("entire_plan", [0.1, 0.3])):
        for seed, s in enumerate(vals):
            # Runs that record greedy cycling (recorded since 2026-12-05; maze7's runs predate it).
            _write_run(os.path.join(soko, method, f"seed{seed}"), s, seed=seed, cycled=0.1 * (seed + 1))
    os.makedirs(os.path.join(root, "not_an_experiment"))  # ignored: no experiment.json, no seed dirs
    summary = report.write_report(root)
    return root, summary


def _row(table, name):
    rows = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, table
    return [c.strip() for c in rows[0].strip("|").split("|")]


def _header(table):
    return [c.strip() for c in table.splitlines()[2].strip("|").split("|")]  # after "# title", blank


def test_load_run_skips_cut_line_and_falls_back_to_step0_eval(results):
    root, _ = results
    run = report.load_run(os.path.join(root, "maze7", "rescale", "seed2"))
    assert not run["complete"] and run["after"] is None and run["final"] is None
    assert run["skipped_lines"] == 1 and run["last_step"] == 6
    assert run["before"]["greedy/success_rate"] == 0.25  # rebuilt from the step-0 eval record
    done = report.load_run(os.path.join(root, "maze7", "rescale", "seed0"))
    assert done["complete"] and done["after"]["greedy/success_rate"] == 0.2 and done["seconds"] == 12.5


def test_table_cells_and_seed_counts(results):
    root, _ = results
    table = open(os.path.join(root, "maze7", "table.md")).read()
    header = _header(table)
    assert header[0] == "method" and header[-1] == "n seeds" and "Maze-9x9 success (%)" in header
    col = {h: i for i, h in enumerate(header)}
    wmact = _row(table, "wmact")
    # greedy success 0.5, 0.6, 0.7 -> mean 60.0 %, sample std 10.0 %
    assert wmact[col["success, final turn cap (%)"]] == "60.0 ± 10.0"
    assert wmact[col["mean turns"]] == "3.00 ± 0.00"
    assert wmact[col["actions per turn"]] == "1.50 ± 0.00"  # mean actions 4.5 over 3 turns
    assert wmact[col["Maze-9x9 success (%)"]] == "15.0 ± 2.5"  # success / 4
    assert wmact[col["n seeds"]] == "3/3"
    inter = _row(table, "interactive")
    # 0.4375, 0.5, 0.45: mean 46.25 %, std = sqrt(((-.025)^2 + .0375^2 + (-.0125)^2) / 2)
    vals = [0.4375, 0.5, 0.45]
    expected = f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals, ddof=1):.1f}"
    assert expected == "46.2 ± 3.3" or expected == "46.3 ± 3.3"
    assert inter[col["success, final turn cap (%)"]] == expected
    assert inter[col["optimality gap"]] == "0.50 ± 0.00 (n=2)"  # one seed has no gap
    # the killed run: not in the final numbers, named with its progress
    rescale = _row(table, "rescale")
    assert rescale[col["n seeds"]] == "2/3"
    assert rescale[col["success, final turn cap (%)"]] == f"25.0 ± {np.std([20, 30], ddof=1):.1f}"
    assert "seed2 (incomplete, at step 6 of 10)" in table
    assert "rescale: seed0 20.0; seed1 30.0;" in table
    warm = _row(table, "*warm start (before RL)*")
    assert warm[col["success, final turn cap (%)"]] == "25.0 ± 0.0" and warm[-1] == "9 runs"
    # order from experiment.json; legend mentions env and iterations
    assert table.index("| wmact |") < table.index("| interactive |") < table.index("| rescale |")
    assert "Maze-7x7" in table and f"{ITERS} RL iterations" in table
    assert "unreadable metrics.jsonl line" in table


def test_every_method_against_the_baseline_with_a_welch_interval(results):
    """Each method's greedy success against PPO-Interactive's: the difference of the means with scipy's
    Welch interval (the killed rescale seed left out); no interval where a side has one seed or the
    baseline did not run; zero spread on both sides is no interval's width."""
    from scipy import stats

    root, _ = results
    table = open(os.path.join(root, "maze7", "table.md")).read()
    assert "Greedy success against interactive, in points" in table
    base = [43.75, 50.0, 45.0]
    for method, vals in (("wmact", [50.0, 60.0, 70.0]), ("rescale", [20.0, 30.0])):
        ci = stats.ttest_ind(vals, base, equal_var=False).confidence_interval(0.95)
        diff = np.mean(vals) - np.mean(base)
        line = f"- {method}: {diff:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}] ({len(vals)} vs 3 seeds)"
        assert line in table, (line, table)
    soko = open(os.path.join(root, "sokoban6", "table.md")).read()  # interactive 20, 20; entire_plan 10, 30
    assert "- entire_plan: +0.0 [-127.1, +127.1] (2 vs 2 seeds)" in soko  # t(0.975, 1) = 12.71, se = 10
    assert report.welch_interval([1.0, 3.0], [2.0]) is None and report.welch_interval([2, 2], [1, 1]) == (1, 1, 1)
    assert report._against_baseline({"wmact": [0.5, 0.6], "interactive": [0.5]}, ["wmact", "interactive"]) == []
    assert report._against_baseline({"wmact": [0.5, 0.6]}, ["wmact"]) == []  # no baseline in the experiment


def test_fixed_order_and_entire_plan_single_turn(results):
    root, _ = results
    table = open(os.path.join(root, "sokoban6", "table.md")).read()
    assert table.index("| entire_plan |") < table.index("| interactive |") < table.index("| wmact |")
    col = {h: i for i, h in enumerate(_header(table))}
    ep = _row(table, "entire_plan")
    assert ep[col["success, 1 turn (%)"]] == ep[col["success, final turn cap (%)"]] + " †"
    assert "† entire_plan" in table
    assert _row(table, "wmact")[col["success, 1 turn (%)"]] == "20.0 ± 7.1"  # its own single_turn (s/2)
    assert _row(table, "wmact")[col["n seeds"]] == "2"  # no experiment.json: planned count unknown
    # Greedy cycling: a column where runs record it (seed0 10%, seed1 20%), none where no run does.
    assert _row(table, "wmact")[col["greedy, cycling (%)"]] == "15.0 ± 7.1"
    assert "greedy, cycling (%)" not in _header(open(os.path.join(root, "maze7", "table.md")).read())


def test_pngs_are_valid(results):
    root, _ = results
    for exp in ("maze7", "sokoban6"):
        for name in ("curves.png", "eval.png"):
            path = os.path.join(root, exp, name)
            assert os.path.getsize(path) > 5000, path
            with open(path, "rb") as f:
                assert f.read(8) == PNG_MAGIC


def test_results_jsonl_one_line_per_completed_run(results):
    root, _ = results
    rows = [json.loads(line) for line in open(os.path.join(root, "results.jsonl"))]
    assert len(rows) == 3 + 3 + 2 + 3 * 2  # rescale seed2 was killed
    keys = {(r["exp"], r["method"], r["seed"]) for r in rows}
    assert ("maze7", "rescale", 2) not in keys and ("maze7", "rescale", 1) in keys
    r = next(r for r in rows if (r["exp"], r["method"], r["seed"]) == ("maze7", "wmact", 1))
    assert r["env"] == "Maze-7x7" and r["iterations"] == ITERS and r["seconds"] == 12.5
    assert r["greedy/success_rate"] == 0.6 and r["transfer/Maze-9x9/success_rate"] == 0.15
    assert r["before/greedy/success_rate"] == 0.25


def test_summary_links_images_and_command(results):
    root, summary = results
    assert summary == os.path.join(root, "summary.md")
    text = open(summary).read()
    assert "## maze7 (Maze-7x7)" in text and "## sokoban6" in text
    assert "![curves](maze7/curves.png)" in text and "![eval](sokoban6/eval.png)" in text
    assert "python experiments/run.py --suite quick" in text and "Machine: test box" not in text
    assert "machine: test box" in text and "UTC" in text
    assert text.index("## maze7") < text.index("## sokoban6")  # suite.json's order
    assert "not_an_experiment" not in text


def test_aggregate_curves(results):
    root, _ = results
    agg = report.aggregate(os.path.join(root, "maze7"))
    assert agg["window"] == 1  # 10 iterations // 10
    band = agg["curves"]["rescale"]["success_rate"]
    assert band["n_runs"] == 3 and band["steps"].tolist() == list(range(1, ITERS + 1))
    assert band["count"].tolist() == [3] * 6 + [2] * 4  # the killed run stops at step 6
    assert agg["curves"]["rescale"]["unfinished"] == 1 and agg["curves"]["wmact"]["unfinished"] == 0
    assert np.all(band["lo"] <= band["mean"]) and np.all(band["mean"] <= band["hi"])
    assert agg["curves"]["wmact"]["eval"]["steps"].tolist() == [0, 5, 10]


def test_cli_ok_without_jax(results):
    root, _ = results
    proc = subprocess.run([sys.executable, "-X", "importtime", SCRIPT, root], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "summary.md" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "matplotlib" in imported and not any(m == "jax" or m.startswith("jax.") for m in imported)


@pytest.mark.parametrize("make", [True, False])
def test_cli_empty_or_missing_dir_exits_2(tmp_path, make):
    path = tmp_path / "results"
    if make:
        path.mkdir()
    proc = subprocess.run([sys.executable, SCRIPT, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(report.ReportError, match="results"):
        report.write_report(str(path))


def test_a_warm_start_only_experiment_reports_zero_rl_iterations(tmp_path):
    """`--set train.iterations=0` (evaluate a warm start, no RL): 0 iterations, not an unknown number."""
    exp = tmp_path / "maze5"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps({"env": "Maze-5x5", "methods": ["wmact"], "seeds": [0],
                                                      "iterations": 0}))
    _write_run(str(exp / "wmact" / "seed0"), 0.5)
    report.write_report(str(tmp_path))
    assert "Environment **Maze-5x5**, 0 RL iterations per run." in (exp / "table.md").read_text()


def test_success_at_the_starting_cap_puts_every_method_on_one_budget(tmp_path):
    """greedy_l0 is evaluated where the cap anneals; a fixed-cap method's starting cap is its final one,
    so its greedy success fills the column; seeds run before the column existed count as absent."""
    exp = tmp_path / "taxi"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps({"env": "Taxi-v3", "methods": ["wmact", "interactive"],
                                                      "seeds": [0, 1, 2], "iterations": ITERS}))
    for method, kind, vals in (("wmact", "wmact", [0.5, 0.6, 0.7]), ("interactive", "fixed", [0.8, 0.9, 0.85])):
        for seed, s in enumerate(vals):
            run = exp / method / f"seed{seed}"
            _write_run(str(run), s, seed=seed)
            (run / "config.json").write_text(json.dumps({"anneal": {"kind": kind}}))
            if method == "wmact" and seed < 2:  # seed 2 ran before greedy_l0 was evaluated
                final = json.loads((run / "final.json").read_text())
                final["after"]["metrics"]["greedy_l0/success_rate"] = s + 0.2
                (run / "final.json").write_text(json.dumps(final))
    report.write_report(str(tmp_path))
    table = (exp / "table.md").read_text()
    col = {h: i for i, h in enumerate(_header(table))}
    assert _row(table, "wmact")[col["success, starting cap (%)"]] == "75.0 ± 7.1 (n=2)"  # 70, 80
    assert _row(table, "interactive")[col["success, starting cap (%)"]] == "85.0 ± 5.0"  # = its greedy
    assert _row(table, "*warm start (before RL)*")[col["success, starting cap (%)"]] == "25.0 ± 0.0"
    assert "**success, starting cap**" in table
    # results.jsonl keeps what was evaluated: no greedy_l0 where none ran.
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["seed"]) for r in rows if "greedy_l0/success_rate" in r} == {("wmact", 0), ("wmact", 1)}
    # Without any greedy_l0 the column stays out, fixed-cap runs or not.
    for run in (exp / "wmact").iterdir():
        final = json.loads((run / "final.json").read_text())
        final["after"]["metrics"].pop("greedy_l0/success_rate", None)
        (run / "final.json").write_text(json.dumps(final))
    report.write_report(str(tmp_path))
    assert "success, starting cap (%)" not in _header((exp / "table.md").read_text())


def _per_level_experiment(root):
    """An experiment of 3 methods x 2 seeds whose eval_16.json keep each level's episode; its report written."""
    exp = root / "sokoban6"
    opt = [2, 3, 4, 5, 6, 7, 8, 9] * 2
    for method, solved in (("entire_plan", [[1] * 8 + [0] * 8, [1] * 12 + [0] * 4]),
                           ("interactive", [[1] * 10 + [0] * 6, [1] * 16]), ("wmact", [[0, 1] * 8, [1, 0] * 8])):
        for seed, bits in enumerate(solved):
            run = exp / method / f"seed{seed}"
            _write_run(str(run), float(np.mean(bits)), seed=seed)
            per = {"greedy": {"solved": bits, "optimal": opt}}
            if method != "entire_plan":
                per["single_turn"] = {"solved": bits[::-1], "optimal": opt}
            record = {"eval_levels": 16, "method": method,
                      "after": {"step": ITERS, "metrics": _eval("", float(np.mean(bits))), "levels": per}}
            if seed == 0:
                record["before"] = {"step": 0, "metrics": _eval("", 0.25),
                                    "levels": {"greedy": {"solved": [1] * 4 + [0] * 12, "optimal": opt},
                                               "single_turn": {"solved": [0] * 16, "optimal": opt}}}
            (run / "eval_16.json").write_text(json.dumps(record))
    report.write_report(str(root))
    return exp


def test_per_level_records_add_the_level_study(tmp_path):
    """eval_<N>.json with each level's episode: under its re-evaluated table, experiments/levels.py's split
    of the seeds' spread and success by optimal length, the warm start's row from a multi-turn method."""
    exp = _per_level_experiment(tmp_path)
    section = (exp / "table.md").read_text().split("### Re-evaluated on 16 held-out levels")[1]
    assert "#### Per level (16 levels, greedy)" in section
    # The same rate from other levels: no spread seen, all of what is expected from the level sample.
    assert "| wmact | 2 | 0.0 | 18.3 | 0.0 | 1.000 |" in section
    assert "| *warm start (before RL)* | 1 | 50.0 | 16.7 | 0.0 |" in section  # greedy: 3 of 6, 1 of 6, 0 of 4
    assert section.count("by the level's optimal solution length") == 2  # greedy, 1 turn


def test_levels_cli_pools_folders_of_the_same_levels(tmp_path, capsys):
    """experiments/levels.py over two folders puts each method's runs together (re-runs, more seeds), and
    refuses a folder scored on other levels."""
    import shutil

    from experiments import levels

    exp = _per_level_experiment(tmp_path / "a")
    more = tmp_path / "b" / "sokoban6"
    shutil.copytree(exp / "wmact", more / "wmact")
    assert levels.main([str(exp), str(more), "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "| wmact | 4 |" in out and "| interactive | 2 |" in out
    # Every run's metrics too, against the baseline: wmact's four runs at 50%, interactive's at 62.5 and 100.
    every = out.split("#### Every run on 16 levels (2 folder(s)")[1]
    assert "| wmact | 4 | 50.00 ± 0.00 |" in every and "| interactive | 2 | 81.25 ± 26.52 |" in every
    assert levels.main([str(more), "--size", "16"]) == 0 and "| wmact | 2 |" in capsys.readouterr().out
    for run in (more / "wmact").iterdir():  # the same runs, scored on other levels
        record = json.loads((run / "eval_16.json").read_text())
        record["after"]["levels"]["greedy"]["optimal"] = list(range(16))
        (run / "eval_16.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="scored on other levels"):
        levels.main([str(exp), str(more), "--size", "16"])
    with pytest.raises(SystemExit, match="no run has eval_32.json"):
        levels.main([str(exp), "--size", "32"])


def test_published_reevaluations_belong_to_their_runs():
    """Every eval_<N>.json in experiments/results (experiments/reevaluate.py) sits in a finished run folder
    and holds that run's final policy: the same iteration as its final.json, played at the same final
    turn cap; a warm-start part is the before-RL policy at the starting cap. The report shows it."""
    import glob

    found = [p for p in glob.glob(os.path.join(ROOT, "experiments", "results", "*", "*", "*", "seed*", "eval_*.json"))
             if os.path.basename(p)[len("eval_"):-len(".json")].isdigit()]  # not eval_initial.json
    assert found, "no published re-evaluation (experiments/results/sokoban6_plan has them)"
    for path in found:
        run = os.path.dirname(path)
        final, again = (json.load(open(os.path.join(run, f))) for f in ("final.json", os.path.basename(path)))
        assert again["eval_levels"] == int(os.path.basename(path)[len("eval_"):-len(".json")]) > 48, path
        assert again["after"]["step"] == final["after"]["step"], path
        cap = again["after"]["metrics"]["greedy/turn_cap"]
        assert cap == final["after"]["metrics"]["greedy/turn_cap"], path
        for part in ("after", "before"):  # each level's episode, where kept: the metrics are their means
            for mode, per in again.get(part, {}).get("levels", {}).items():
                m = again[part]["metrics"]
                assert len(per["solved"]) == again["eval_levels"], (path, mode)
                assert np.mean(per["solved"]) == pytest.approx(m[f"{mode}/success_rate"]), (path, part, mode)
                assert np.mean(per["turns"]) == pytest.approx(m[f"{mode}/mean_turns"]), (path, part, mode)
        if "before" in again:
            assert again["before"]["step"] == 0
            assert again["before"]["metrics"]["greedy/turn_cap"] == final["before"]["metrics"]["greedy/turn_cap"]
        exp_dir = os.path.dirname(os.path.dirname(run))
        assert f"### Re-evaluated on {again['eval_levels']} held-out levels" in open(
            os.path.join(exp_dir, "table.md")).read(), exp_dir


def test_published_budget_plays_belong_to_their_runs():
    """Every caps_<N>.json in experiments/results (experiments/budget.py) holds its run's final policy on
    the levels of that run's eval_<N>.json: cap 1 is its single-turn episodes, its own final cap its greedy
    ones and L_0 its starting-cap ones, level for level."""
    import glob

    found = glob.glob(os.path.join(ROOT, "experiments", "results", "*", "*", "*", "seed*", "caps_*.json"))
    assert found, "no published budget play (experiments/results/sokoban6_plan_turns_left has them)"
    for path in found:
        run = os.path.dirname(path)
        size = os.path.basename(path)[len("caps_"):-len(".json")]
        caps, own = (json.load(open(os.path.join(run, f))) for f in (os.path.basename(path), f"eval_{size}.json"))
        after = own["after"]
        assert caps["step"] == after["step"] == json.load(open(os.path.join(run, "final.json")))["after"]["step"]
        played = {"1": "single_turn", str(int(after["metrics"]["greedy/turn_cap"])): "greedy",
                  str(caps["max_turns"]): "greedy_l0"}
        for cap, mode in played.items():
            if cap in caps["caps"] and mode in after["levels"]:
                assert caps["caps"][cap]["solved"] == after["levels"][mode]["solved"], (path, cap, mode)
        for cap, c in caps["caps"].items():
            assert len(c["solved"]) == int(size) and np.mean(c["solved"]) == pytest.approx(c["success_rate"])


def test_seeds_planned_per_method(tmp_path):
    """Seeds added to some methods only (experiment.json's method_seeds) count against those methods:
    the others read complete (5/5), not unfinished (5/7); the setup line names who has which seeds."""
    exp = tmp_path / "sokoban6"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps({
        "env": "Sokoban-6x6-1", "methods": ["interactive", "rescale"], "seeds": [0, 1, 2], "iterations": ITERS,
        "method_seeds": {"interactive": [0, 1, 2], "rescale": [0, 1]}}))
    for method, seeds in (("interactive", (0, 1, 2)), ("rescale", (0, 1))):
        for seed in seeds:
            _write_run(str(exp / method / f"seed{seed}"), 0.5 + 0.1 * seed, seed=seed)
    report.write_report(str(tmp_path))
    table = (exp / "table.md").read_text()
    col = {h: i for i, h in enumerate(_header(table))}
    assert _row(table, "interactive")[col["n seeds"]] == "3/3"
    assert _row(table, "rescale")[col["n seeds"]] == "2/2"
    assert "by method: interactive: 0, 1, 2; rescale: 0, 1" in table
