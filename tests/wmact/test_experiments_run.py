"""The experiment runner end to end on a tiny suite: shared warm start, runs, resume, transfer, report."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments import run as runner  # noqa: E402
from wmact_jax.rollout import END_REASONS  # noqa: E402

TINY = ["--set", "model.hidden_size=32", "--set", "model.intermediate_size=64", "--set", "model.num_layers=2",
        "--set", "model.num_heads=2", "--set", "model.num_kv_heads=1",
        "--set", "train.iterations=1", "--set", "train.eval_levels=4", "--set", "warmstart.steps=10",
        "--set", "warmstart.num_levels=40", "--set", "warmstart.batch_size=8",
        "--set", "rollout.levels_per_iteration=2", "--set", "env.eval_names=('Maze-9x9',)",
        "--set", "rollout.max_turn_tokens=16"]
# Each run's warm start and final policy evaluated again on 6 levels (eval_6.json).
FINAL = ["--set", "train.final_eval_levels=6"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("suite"))
    assert runner.main(["--suite", "quick", "--out", out, "--methods", "wmact,entire_plan", "--seeds", "0"] + TINY
                       + FINAL) == 0
    return out


def test_suite_writes_runs_tables_and_plots(results):
    exp = os.path.join(results, "maze5")
    for m in ("wmact", "entire_plan"):
        final = json.load(open(os.path.join(exp, m, "seed0", "final.json")))
        after = final["after"]["metrics"]
        assert final["after"]["step"] == 1 and 0.0 <= after["greedy/success_rate"] <= 1.0
        assert "transfer/Maze-9x9/success_rate" in after  # transfer evaluation ran on the larger maze
        assert ("single_turn/success_rate" in after) == (m != "entire_plan")
        assert ("greedy_l0/success_rate" in after) == (m == "wmact")  # where the cap anneals
    cfg = json.load(open(os.path.join(exp, "entire_plan", "seed0", "config.json")))
    # entire_plan: one turn carrying the whole plan, whatever the preset's per-turn budget.
    assert cfg["rollout"]["max_actions_per_turn"] == cfg["rollout"]["max_actions"]
    assert cfg["anneal"]["l0"] == 1 and cfg["warmstart"]["path"].endswith("warmstart")
    table = open(os.path.join(exp, "table.md")).read()
    assert "| wmact |" in table and "| entire_plan |" in table and "Maze-9x9" in table
    assert "success, starting cap (%)" in table
    assert open(os.path.join(exp, "curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    lines = open(os.path.join(results, "results.jsonl")).read().splitlines()
    assert len(lines) == 2
    # The compilation cache the caller had open (the test session's) served the suite: no cache of its own.
    assert not os.path.exists(os.path.join(results, ".jax_cache"))
    assert "maze5" in open(os.path.join(results, "summary.md")).read()


def test_rerun_skips_finished_runs_and_reuses_the_warm_start(results, capsys):
    exp = os.path.join(results, "maze5")
    stamp = os.path.getmtime(os.path.join(exp, "wmact", "seed0", "final.json"))
    warm = os.path.getmtime(os.path.join(exp, "warmstart", "warmstart.json"))
    assert runner.main(["--suite", "quick", "--out", results, "--methods", "wmact", "--seeds", "0"] + TINY
                       + FINAL) == 0
    assert os.path.getmtime(os.path.join(exp, "wmact", "seed0", "final.json")) == stamp
    assert os.path.getmtime(os.path.join(exp, "warmstart", "warmstart.json")) == warm
    # The first command's record survives the second one (suite.json keeps a history; summary.md shows it).
    meta = json.load(open(os.path.join(results, "suite.json")))
    assert meta["command"].endswith(" ".join(["--methods", "wmact", "--seeds", "0"] + TINY + FINAL))
    assert len(meta["history"]) == 1 and "wmact,entire_plan" in meta["history"][0]["command"]
    assert meta["history"][0]["seconds"] > 0 and meta["experiments"] == {"maze5": "Maze-5x5"}
    assert "Earlier commands into this directory:" in open(os.path.join(results, "summary.md")).read()
    assert runner.cpu_name() in meta["machine"]  # the CPU's model: XLA's float rounding follows it
    # experiment.json keeps every method and seed run into the directory (the table's order and counts).
    info = json.load(open(os.path.join(exp, "experiment.json")))
    assert info["methods"] == ["wmact", "entire_plan"] and info["seeds"] == [0]
    # The reused warm start keeps the time it took to train, not the moment it took to find.
    assert info["warmstart_reused"] is True
    assert info["warmstart_seconds"] >= 0.99 * info["warmstart"]["warmstart/seconds"] > 0


def test_runs_of_other_settings_do_not_join_a_results_folder(results, capsys):
    """A results table pools seeds under one record of settings: a command with another --set must
    not add its runs there (they would be averaged in under the wrong record)."""
    exp = os.path.join(results, "maze5")
    before = sorted(os.listdir(exp))
    argv = ["--suite", "quick", "--out", results, "--methods", "interactive", "--seeds", "0"] + TINY
    assert runner.main(argv + ["--set", "anneal.rounding=round"]) == 2
    err = capsys.readouterr().err
    assert "anneal.rounding" in err and "'round' now" in err and "another --out" in err
    assert sorted(os.listdir(exp)) == before  # nothing ran, nothing was written
    # A value equal in JSON (a tuple written as a list) is the same setting.
    sets = runner.parse_sets((TINY + FINAL)[1::2])
    assert runner.settings_conflict(exp, runner.recorded_overrides("maze5", "quick", sets)) is None
    # What is evaluated is not how the runs train: seeds evaluated in more (or fewer) modes or levels may join.
    more = {**sets, "train.eval_modes": ("greedy", "greedy_l0"), "train.transcripts": 0,
            "train.final_eval_levels": 0}
    assert runner.settings_conflict(exp, runner.recorded_overrides("maze5", "quick", more)) is None
    changed = runner.evaluation_changes(exp, runner.recorded_overrides("maze5", "quick", more))
    assert [c.split(":")[0] for c in changed] == ["train.eval_modes", "train.final_eval_levels", "train.transcripts"]
    assert runner.evaluation_changes(exp, runner.recorded_overrides("maze5", "quick", sets)) == []
    why = runner.settings_conflict(exp, runner.recorded_overrides("maze5", "quick", {**more, "ppo.lr": 3e-4}))
    assert "ppo.lr" in why and "eval_modes" not in why


def test_warm_start_that_does_not_fit_the_model_is_a_clear_error(results):
    import jax

    from wmact_jax import config_check
    from wmact_jax.checkpoints.hf_folder import CheckpointError
    from wmact_jax.train import Trainer

    sets = runner.parse_sets(TINY[1::2])
    sets["model.hidden_size"] = 48
    sets["model.intermediate_size"] = 96
    c = runner.experiment_config("maze5", "quick", sets, "wmact", 0)
    c.warmstart.enabled, c.warmstart.path = False, os.path.join(results, "maze5", "warmstart")
    c = config_check.prepare_config(c)
    trainer = Trainer(c)
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.warmstart(trainer.init_state(jax.random.key(0)))


def test_warm_start_serves_a_separate_critic(results):
    """A warm start saved with a value head loads into a run whose policy has none (critic='separate'),
    and the critic's trunk starts as the warm-started policy."""
    import jax
    import numpy as np

    from wmact_jax import config_check
    from wmact_jax.train import Trainer

    c = runner.experiment_config("maze5", "quick", runner.parse_sets(TINY[1::2]), "wmact", 0)
    c.warmstart.enabled, c.warmstart.path = False, os.path.join(results, "maze5", "warmstart")
    c.model.critic = "separate"
    trainer = Trainer(config_check.prepare_config(c))
    state, _ = trainer.warmstart(trainer.init_state(jax.random.key(0)))
    policy, critic = state.ppo.params["policy"].to_pure_dict(), state.ppo.params["critic"].to_pure_dict()
    assert "value_head" not in policy and "value_head" in critic
    np.testing.assert_array_equal(np.asarray(policy["embed"]), np.asarray(critic["embed"]))


def test_more_levels_at_the_end_and_reevaluation_agree(results, capsys, tmp_path):
    """train.final_eval_levels=6: each run evaluates its warm start (a method's first seed) and its final
    policy again on 6 levels into eval_6.json, and the table shows it. experiments/reevaluate.py rebuilds a
    run's Trainer from its config.json and checkpoints: it must give the run's own numbers exactly, and it
    skips a run whose file is done. (One method re-evaluated: every method's runs take the same path.)"""
    from experiments import reevaluate

    exp = os.path.join(results, "maze5")
    run = os.path.join(exp, "wmact", "seed0")
    final, own = (json.load(open(os.path.join(run, f))) for f in ("final.json", "eval_6.json"))
    assert own["eval_levels"] == 6 and own["after"]["step"] == final["after"]["step"] == 1
    assert own["before"]["step"] == 0
    for part in ("after", "before"):
        assert own[part]["metrics"].keys() == final[part]["metrics"].keys(), part  # transfer too
        # Each level's episode: the metrics are its means (Trainer.evaluate_levels), the oracle's lengths known.
        per, m = own[part]["levels"], own[part]["metrics"]
        assert set(per) == {k.split("/")[0] if not k.startswith("transfer/") else "/".join(k.split("/")[:2])
                            for k in m}
        for mode, lv in per.items():
            assert {len(v) for v in lv.values()} == {6}, mode
            assert np.mean(lv["solved"]) == pytest.approx(m[f"{mode}/success_rate"]), mode
            assert np.mean(lv["turns"]) == pytest.approx(m[f"{mode}/mean_turns"]), mode
            assert sum(lv["effective"]) / max(1, sum(lv["actions"])) == pytest.approx(m[f"{mode}/efficacy"]), mode
            assert all(o > 0 for o in lv["optimal"]) and set(lv["end"]) <= set(END_REASONS), mode
    assert json.load(open(os.path.join(exp, "entire_plan", "seed0", "eval_6.json")))["after"]["step"] == 1
    capsys.readouterr()
    assert reevaluate.main([exp, "--eval-levels", "6", "--methods", "wmact", "--no-report"]) == 0
    assert capsys.readouterr().out.count("already, skipped") == 1
    assert reevaluate.main([exp, "--eval-levels", "6", "--methods", "wmact", "--force"]) == 0
    again = json.load(open(os.path.join(run, "eval_6.json")))
    for part in ("after", "before"):
        theirs = {k: v for k, v in own[part]["metrics"].items() if not k.startswith("transfer/")}
        assert again[part]["metrics"] == pytest.approx(theirs), part  # every mode but transfer (--transfer)
        assert again[part]["levels"] == {k: v for k, v in own[part]["levels"].items()
                                         if not k.startswith("transfer/")}, part
    table = open(os.path.join(exp, "table.md")).read()
    assert "### Re-evaluated on 6 held-out levels" in table and "eval_6.json" in table
    section = table.split("### Re-evaluated on 6 held-out levels")[1]
    assert "| wmact |" in section and "| entire_plan |" in section and "| *warm start (before RL)* |" in section
    rows = {r["method"]: r for r in map(json.loads, open(os.path.join(results, "results.jsonl")))}
    assert "eval6/greedy/success_rate" in rows["wmact"] and "eval6/greedy/success_rate" in rows["entire_plan"]
    with pytest.raises(SystemExit, match="no config.json"):
        reevaluate.restore_run(os.path.join(exp, "warmstart"))
    # A run still training (no final.json) is not evaluated: its policy is not the one the table reports.
    unfinished = tmp_path / "exp" / "wmact" / "seed0"
    os.makedirs(unfinished / "checkpoints")
    assert reevaluate.main([str(tmp_path / "exp"), "--no-report"]) == 0
    assert "unfinished (no final.json), skipped" in capsys.readouterr().out
    assert not os.path.exists(unfinished / "eval_256.json")


def test_budget_plays_each_run_at_every_cap_and_matches_its_own_evaluation(results, tmp_path, capsys):
    """experiments/budget.py: each run's final policy under caps 1..L_0 on the eval_<N>.json levels; cap 1 is
    the single-turn evaluation and the run's own cap its greedy one, level by level; a second call reads
    the file instead of playing again; the table pools the runs and writes budget.md / budget.png."""
    from experiments import budget

    exp = os.path.join(results, "maze5")
    run = os.path.join(exp, "wmact", "seed0")
    assert budget.main([exp, "--eval-levels", "6", "--caps", "1,2,5", "--methods", "wmact", "--out",
                        str(tmp_path)]) == 0
    rec = json.load(open(os.path.join(run, "caps_6.json")))
    own = json.load(open(os.path.join(run, "eval_6.json")))["after"]
    assert rec["step"] == own["step"] and sorted(rec["caps"], key=int) == ["1", "2", "5"]
    assert rec["caps"]["1"]["solved"] == own["levels"]["single_turn"]["solved"]
    cap = int(own["metrics"]["greedy/turn_cap"])
    budget.main([exp, "--eval-levels", "6", "--caps", str(cap), "--methods", "wmact"])
    rec = json.load(open(os.path.join(run, "caps_6.json")))
    assert rec["caps"][str(cap)]["solved"] == own["levels"]["greedy"]["solved"]
    assert np.mean(rec["caps"]["5"]["solved"]) == pytest.approx(rec["caps"]["5"]["success_rate"])
    capsys.readouterr()
    assert budget.main([exp, "--eval-levels", "6", "--caps", "1,5", "--methods", "wmact"]) == 0
    out = capsys.readouterr().out
    assert "->" not in out and "| wmact | 1 |" in out  # nothing played again: read from the file
    text = open(tmp_path / "budget.md").read()
    assert "| method | runs | cap 1 | cap 2 | cap 5 |" in text and "longest levels" in text
    assert open(tmp_path / "budget.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # argparse's error: not a turn cap
        budget.main([exp, "--caps", "0,1"])
    capsys.readouterr()  # a cap above a run's bound (EntirePlan's is 1) is left out of that run, said so
    assert budget.main([exp, "--eval-levels", "6", "--caps", "1,2", "--methods", "entire_plan"]) == 0
    out = capsys.readouterr().out
    assert "caps 2 are above its static turn bound 1, left out" in out and "| entire_plan | 1 |" in out
    rec = json.load(open(os.path.join(exp, "entire_plan", "seed0", "caps_6.json")))
    assert list(rec["caps"]) == ["1"]


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    assert runner.main(["--suite", "quick", "--out", str(tmp_path), "--methods", "wmcat"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert runner.main(["--suite", "quick", "--out", str(tmp_path), "--set", "ppo.lr=-1"]) == 2
    assert "ppo.lr" in capsys.readouterr().err
    # A suite-wide seed would make every "seed" of a method the same run.
    assert runner.main(["--suite", "quick", "--out", str(tmp_path), "--set", "seed=1"]) == 2
    assert "--set warmstart.seed" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown config field"):
        runner.main(["--suite", "quick", "--out", str(tmp_path), "--set", "ppo.lrr=1"])


def test_length_buckets_hold_every_demo_with_enough_rows():
    from wmact_jax.warmstart import length_buckets

    lengths = [100] * 40 + [300] * 3 + [200] * 5
    b = length_buckets(lengths, 128, 8)
    assert sorted(i for idx in b.values() for i in idx) == list(range(48))
    assert all(len(idx) >= 8 for idx in b.values())
    assert all(lengths[i] <= w for w, idx in b.items() for i in idx)
    assert list(length_buckets(lengths, 0, 8)) == [320]


def test_warmstart_command_saves_a_policy_runs_can_start_from(tmp_path):
    import subprocess

    out = tmp_path / "ws"
    args = [sys.executable, "-m", "wmact_jax.warmstart", "--config=maze_scratch", f"--out={out}"]
    args += [f"--config.{k}" for k in ("warmstart.steps=10", "warmstart.num_levels=30", "warmstart.batch_size=8", "warmstart.state_loss=0.5",
                                        "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
                                        "model.num_heads=2", "model.num_kv_heads=1", "env.name=Maze-5x5")]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warm start saved to" in r.stdout
    info = json.load(open(out / "warmstart.json"))
    assert info["env"] == "Maze-5x5" and info["metrics"]["warmstart/demos"] > 0
    # Never overwritten silently.
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "overwrite" in (r.stderr + r.stdout)


def test_a_suite_wide_override_does_not_undo_entire_plan():
    """`--set anneal.l0=10` (more turns for the multi-turn methods) must leave entire_plan one turn
    holding the whole plan, and reach every other method."""
    from wmact_jax import config_check

    sets = {"anneal.l0": 10, "rollout.max_actions_per_turn": 3, "ppo.lr": 3e-4}
    plan = config_check.prepare_config(runner.experiment_config("maze5", "quick", sets, "entire_plan"),
                                       runner.method_sets(sets, "entire_plan").keys())
    assert (plan.anneal.l0, plan.anneal.kind, plan.ppo.lr) == (1, "fixed", 3e-4)
    assert plan.rollout.max_actions_per_turn == plan.rollout.max_actions == 16
    for m in ("interactive", "wmact", "step_penalty"):
        c = config_check.prepare_config(runner.experiment_config("maze5", "quick", sets, m),
                                        runner.method_sets(sets, m).keys())
        assert (c.anneal.l0, c.rollout.max_actions_per_turn, c.ppo.lr) == (10, 3, 3e-4), m


def test_an_answer_has_room_for_the_actions_an_override_allows():
    """`--set rollout.max_actions=40` gives entire_plan's one answer room for 40 actions (it used to keep
    the experiment's 20: 68 tokens), `--set rollout.max_actions_per_turn=12` a multi-turn answer room
    for 12; an explicit `rollout.max_turn_tokens` is kept."""
    from configs._scratch import turn_tokens

    plan = runner.experiment_config("taxi", "quick", {"rollout.max_actions": 60}, "entire_plan")
    assert plan.rollout.max_turn_tokens == turn_tokens(60)
    turns = runner.experiment_config("maze5", "quick", {"rollout.max_actions_per_turn": 12}, "wmact")
    assert turns.rollout.max_turn_tokens == turn_tokens(12)
    for m in ("entire_plan", "wmact"):
        c = runner.experiment_config("maze5", "quick", {"rollout.max_actions": 60, "rollout.max_turn_tokens": 50}, m)
        assert c.rollout.max_turn_tokens == 50, m


def _differences(config, recorded: dict) -> dict:
    """{field: (this config's value, the recorded one)} where they differ (as JSON). A field newer than the
    record, at the base config's default, is no difference (a saved config is read back with the defaults
    of the fields it lacks: config_check.config_from_saved). What is evaluated (run.EVALUATION_ONLY:
    greedy_l0 was added since) is not the recipe, and is left out."""
    from configs.base import get_config
    from wmact_jax.config_check import ABSENT, differences, flatten

    default = flatten(json.loads(get_config().to_json()))
    return {k: (a, b) for k, a, b in differences(json.loads(config.to_json()), recorded)
            if not (b == ABSENT and k in default and a == default[k]) and k not in runner.EVALUATION_ONLY}


def test_taxi_suite_is_the_published_two_command_recipe():
    """`--suite taxi` trains what experiments/results/taxi_plan_warmstart_extended was made with by two
    commands: the same settings for both warm-start stages and for the runs, except what is listed."""
    from wmact_jax import config_check

    published = os.path.join(ROOT, "experiments", "results", "taxi_plan_warmstart_extended")
    first = json.load(open(os.path.join(published, "first_warmstart", "warmstart.json")))["config"]
    second = json.load(open(os.path.join(published, "taxi", "warmstart.json")))["config"]
    stage1 = config_check.prepare_config(runner.warmstart_config("taxi", "taxi", {}, stage=0))
    # The first stage ran when the suite's Taxi action cap was 20 (40 since).
    assert _differences(stage1, first) == {"rollout.max_actions": (40, 20)}
    # No `init` folder here (prepare_config checks that it holds a warm start): the recorded one differs.
    stage2 = config_check.prepare_config(runner.warmstart_config("taxi", "taxi", {}, stage=1))
    # Cycles while the loss is above 0.12 (added after): the published second stage ended at 0.0913, so
    # with them it would have run as it did.
    assert _differences(stage2, second) == {"warmstart.init": ("", "FIRST/taxi/warmstart"),
                                            "warmstart.target_loss": (0.12, config_check.ABSENT),
                                            "warmstart.max_cycles": (3, config_check.ABSENT)}
    assert json.load(open(os.path.join(published, "taxi", "warmstart.json")))["metrics"]["warmstart/loss"] < 0.12
    for m, known in (("wmact", {}), ("entire_plan", {"rollout.max_turn_tokens": (128, 68)})):
        run = config_check.prepare_config(runner.experiment_config("taxi", "taxi", {}, m, 0))
        recorded = json.load(open(os.path.join(published, "taxi", m, "seed0", "config.json")))
        diff = {k: v for k, v in _differences(run, recorded).items() if not k.startswith("warmstart.")}
        assert diff == known, m  # entire_plan's answer: room for 40 actions now (see the test above)
    assert runner.recorded_overrides("taxi", "taxi", {})["warmstart_extend"] == [
        {"warmstart.curriculum": 0.0, "warmstart.curriculum_exit": 0.0, "warmstart.target_loss": 0.12,
         "warmstart.max_cycles": 3}]


def test_a_staged_warm_start_trains_each_stage_from_the_last(tmp_path, monkeypatch):
    """A suite's `warmstart_extend` trains a second stage from the first stage's policy, in one command;
    a rerun reuses both, a lost last stage is retrained from the kept first one, and a last stage kept
    alone is used as it is. (The runs themselves are left out: each command's run is handed the last
    stage's folder, which is all a run takes from the warm start; test_suite_writes_runs_tables_and_plots
    runs real ones from a real warm start.)"""
    from experiments import suites

    monkeypatch.setitem(suites.SUITES, "staged", dict(
        suites.SUITES["quick"], warmstart_extend=({"warmstart.steps": 4, "warmstart.curriculum": 0.0},)))
    handed = []  # the warm start each command's run was given; no final.json, so every command runs it

    def run_one(exp, suite, sets, method, seed, warm, run_dir, first_seed=True, pool=None):
        handed.append((method, seed, warm))
        return {"after": {"metrics": {}}}

    monkeypatch.setattr(runner, "run_one", run_one)
    out = str(tmp_path)
    argv = ["--suite", "staged", "--out", out, "--methods", "interactive", "--seeds", "0"] + TINY
    assert runner.main(argv) == 0
    exp = os.path.join(out, "maze5")
    s1 = json.load(open(os.path.join(exp, "warmstart_stage1", "warmstart.json")))
    s2 = json.load(open(os.path.join(exp, "warmstart", "warmstart.json")))
    assert (s1["config"]["warmstart"]["steps"], s1["config"]["warmstart"]["init"]) == (10, "")
    assert s2["config"]["warmstart"]["steps"] == 4 and s2["config"]["warmstart"]["curriculum"] == 0.0
    assert s2["config"]["warmstart"]["init"] == os.path.join(exp, "warmstart_stage1")
    info = json.load(open(os.path.join(exp, "experiment.json")))
    total = s1["metrics"]["warmstart/seconds"] + s2["metrics"]["warmstart/seconds"]
    assert info["warmstart_seconds"] == pytest.approx(total) and info["warmstart_reused"] is False
    assert handed == [("interactive", 0, os.path.join(exp, "warmstart"))]
    # Lose the last stage: the rerun keeps stage 1 and trains stage 2 from it again.
    import shutil

    stamp = os.path.getmtime(os.path.join(exp, "warmstart_stage1", "warmstart.json"))
    shutil.rmtree(os.path.join(exp, "warmstart"))
    assert runner.main(argv) == 0
    assert os.path.getmtime(os.path.join(exp, "warmstart_stage1", "warmstart.json")) == stamp
    assert json.load(open(os.path.join(exp, "warmstart", "warmstart.json")))["config"]["warmstart"]["steps"] == 4
    # Keep only the last stage (as a results folder does): the rerun starts from it, no stage trained again.
    stamp = os.path.getmtime(os.path.join(exp, "warmstart", "warmstart.json"))
    shutil.rmtree(os.path.join(exp, "warmstart_stage1"))
    assert runner.main(argv) == 0
    assert not os.path.exists(os.path.join(exp, "warmstart_stage1"))
    assert os.path.getmtime(os.path.join(exp, "warmstart", "warmstart.json")) == stamp
    assert json.load(open(os.path.join(exp, "experiment.json")))["warmstart_reused"] is True
    assert handed == [("interactive", 0, os.path.join(exp, "warmstart"))] * 3
    # Seeds added to one method are its own: the others are not planned for them (the table's n/planned).
    assert runner.main(["--suite", "staged", "--out", out, "--methods", "wmact", "--seeds", "1,2"] + TINY) == 0
    info = json.load(open(os.path.join(exp, "experiment.json")))
    assert info["seeds"] == [0, 1, 2] and info["methods"] == ["interactive", "wmact"]
    assert info["method_seeds"] == {"interactive": [0], "wmact": [1, 2]}
    rows = runner.report.aggregate(exp)["rows"]
    assert (rows["interactive"]["planned"], rows["wmact"]["planned"]) == (1, 2)
    # A record from before per-method seeds: every method it lists had every seed it lists.
    info.pop("method_seeds")
    info["seeds"] = [0]
    with open(os.path.join(exp, "experiment.json"), "w") as f:
        json.dump(info, f)
    assert runner.main(["--suite", "staged", "--out", out, "--methods", "rescale", "--seeds", "3"] + TINY) == 0
    info = json.load(open(os.path.join(exp, "experiment.json")))
    assert info["method_seeds"] == {"interactive": [0], "wmact": [0], "rescale": [3]}


def test_a_warm_start_can_train_from_another_experiments(tmp_path, monkeypatch):
    """An experiment's `warmstart_from` trains its warm start from that experiment's (trained first, into
    the folder beside it, when missing; reused when there); `--set warmstart.init` names one of the
    user's own instead. The runs are left out, as in the staged test above."""
    from experiments import suites

    monkeypatch.setitem(suites.EXPERIMENTS, "maze5_from", dict(suites.EXPERIMENTS["maze5"], warmstart_from="maze5"))
    handed = []

    def run_one(exp, suite, sets, method, seed, warm, run_dir, first_seed=True, pool=None):
        handed.append(warm)
        return {"after": {"metrics": {}}}

    monkeypatch.setattr(runner, "run_one", run_one)
    out = str(tmp_path / "a")
    argv = ["--suite", "quick", "--experiments", "maze5_from", "--methods", "interactive", "--seeds", "0"] + TINY
    assert runner.main(["--out", out] + argv) == 0
    src, own = os.path.join(out, "maze5", "warmstart"), os.path.join(out, "maze5_from", "warmstart")
    info = lambda folder: json.load(open(os.path.join(folder, "warmstart.json")))["config"]["warmstart"]
    assert info(src)["init"] == "" and info(own)["init"] == src
    assert handed == [own]
    recorded = json.load(open(os.path.join(out, "maze5_from", "experiment.json")))["config_overrides"]
    assert recorded["warmstart_from"] == "maze5"
    # A rerun trains neither again.
    stamps = [os.path.getmtime(os.path.join(f, "warmstart.json")) for f in (src, own)]
    assert runner.main(["--out", out] + argv) == 0
    assert [os.path.getmtime(os.path.join(f, "warmstart.json")) for f in (src, own)] == stamps
    # The experiment's own warm start kept alone (as a results folder keeps it) is used as is.
    import shutil

    shutil.rmtree(os.path.join(out, "maze5"))
    assert runner.main(["--out", out] + argv) == 0
    assert not os.path.exists(os.path.join(out, "maze5")) and handed == [own] * 3
    # A folder of the user's own: no source experiment is trained, and none is recorded.
    other = str(tmp_path / "b")
    assert runner.main(["--out", other, "--set", f"warmstart.init={own}"] + argv) == 0
    assert not os.path.exists(os.path.join(other, "maze5"))
    assert info(os.path.join(other, "maze5_from", "warmstart"))["init"] == own
    recorded = json.load(open(os.path.join(other, "maze5_from", "experiment.json")))["config_overrides"]
    assert "warmstart_from" not in recorded and recorded["warmstart.init"] == own


def test_warm_start_stages_by_experiment_extend_only_that_experiment(tmp_path, monkeypatch):
    """`warmstart_extend` as a dict adds stages to the experiments it names only: the chain of the
    sokoban6_plan suite (Maze's warm start -> the experiment's first stage from it -> its plan stage),
    the source experiment's warm start keeping its single stage."""
    from experiments import suites

    monkeypatch.setitem(suites.EXPERIMENTS, "maze5_from", dict(suites.EXPERIMENTS["maze5"], warmstart_from="maze5"))
    stage = {"warmstart.steps": 4, "warmstart.curriculum": 0.0}
    monkeypatch.setitem(suites.SUITES, "by_exp", dict(suites.SUITES["quick"], warmstart_extend={"maze5_from": (stage,)}))
    assert runner.warmstart_stages("by_exp", "maze5") == [{}]
    assert runner.warmstart_stages("by_exp", "maze5_from") == [{}, stage]
    assert runner.warmstart_stages("sokoban6_plan", "sokoban6")[1] == suites.SOKOBAN6_PLAN_STAGE
    handed = []

    def run_one(exp, suite, sets, method, seed, warm, run_dir, first_seed=True, pool=None):
        handed.append(warm)
        return {"after": {"metrics": {}}}

    monkeypatch.setattr(runner, "run_one", run_one)
    out = str(tmp_path)
    argv = ["--suite", "by_exp", "--experiments", "maze5_from", "--methods", "interactive", "--seeds", "0"] + TINY
    assert runner.main(["--out", out] + argv) == 0
    info = lambda folder: json.load(open(os.path.join(out, folder, "warmstart.json")))["config"]["warmstart"]
    assert sorted(d for d in os.listdir(os.path.join(out, "maze5")) if d.startswith("warmstart")) == ["warmstart"]
    assert info("maze5/warmstart")["init"] == ""
    assert info("maze5_from/warmstart_stage1")["init"] == os.path.join(out, "maze5", "warmstart")
    last = info("maze5_from/warmstart")
    assert last["init"] == os.path.join(out, "maze5_from", "warmstart_stage1") and last["steps"] == 4
    assert handed == [os.path.join(out, "maze5_from", "warmstart")]
    recorded = json.load(open(os.path.join(out, "maze5_from", "experiment.json")))["config_overrides"]
    assert recorded["warmstart_extend"] == [stage] and recorded["warmstart_from"] == "maze5"


def test_sokoban6_plan_suite_is_the_published_recipe():
    """`--suite sokoban6_plan` trains what experiments/results/sokoban6_plan was made with by two folders'
    commands (sokoban6_from_maze's warm start, then `--set` the plan stage): the same settings for both
    warm-start stages and for the runs, but for the folders each stage started from."""
    from experiments import suites
    from wmact_jax import config_check

    results = os.path.join(ROOT, "experiments", "results")
    first = json.load(open(os.path.join(results, "sokoban6_from_maze", "sokoban6", "warmstart", "warmstart.json")))
    second = json.load(open(os.path.join(results, "sokoban6_plan", "sokoban6", "warmstart", "warmstart.json")))
    stage1 = config_check.prepare_config(runner.warmstart_config("sokoban6", "sokoban6_plan", {}, stage=0))
    # That warm start was made by a command that trained no RL iteration (`--set train.iterations=0`).
    assert _differences(stage1, first["config"]) == {"warmstart.init": ("", "MAZE5_WARMSTART"),
                                                     "train.iterations": (50, 0)}
    stage2 = config_check.prepare_config(runner.warmstart_config("sokoban6", "sokoban6_plan", {}, stage=1))
    assert _differences(stage2, second["config"]) == {"warmstart.init": ("", "S6_MAZE_WARMSTART")}
    for m in suites.METHODS:
        run = config_check.prepare_config(runner.experiment_config("sokoban6", "sokoban6_plan", {}, m, 0))
        recorded = json.load(open(os.path.join(results, "sokoban6_plan", "sokoban6", m, "seed0", "config.json")))
        assert {k: v for k, v in _differences(run, recorded).items() if not k.startswith("warmstart.")} == {}, m


def test_reevaluation_scores_the_warm_start_in_every_methods_first_seed(tmp_path, monkeypatch):
    """The warm start (checkpoint 0) is evaluated in the first seed of each method, whatever ran before it
    (a method's later seed without it once switched it off for every method after: the `before` argument
    was reused as the loop's record)."""
    from experiments import reevaluate
    from wmact_jax import main as main_mod

    exp = tmp_path / "exp"
    for method, seeds in (("interactive", (0, 1)), ("wmact", (0, 1)), ("entire_plan", (0,))):
        for seed in seeds:
            run = exp / method / f"seed{seed}"
            for step in (0, 2):
                os.makedirs(run / "checkpoints" / str(step))
            (run / "final.json").write_text("{}")
    monkeypatch.setattr(reevaluate, "open_run", lambda run_dir, *a, **k: (None, lambda step: step, [0, 2], None))
    monkeypatch.setattr(main_mod, "evaluate_modes",
                        lambda trainer, state, config, transfer: ({"greedy/success_rate": state / 4}, {}))
    written = reevaluate.reevaluate(str(exp), 8, log=lambda *a: None)
    assert len(written) == 5
    with_warm = {os.path.relpath(os.path.dirname(p), exp) for p in written if "before" in json.load(open(p))}
    assert with_warm == {"interactive/seed0", "wmact/seed0", "entire_plan/seed0"}
    assert reevaluate.reevaluate(str(exp), 8, before=False, force=True, log=lambda *a: None) and not any(
        "before" in json.load(open(p)) for p in written)
