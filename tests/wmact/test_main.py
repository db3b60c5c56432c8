"""The training loop around the Trainer (wmact_jax.main) and its logging (wmact_jax.metrics), driven
by the Trainer-shaped `FakeTrainer` from test_checkpointing.py."""
import json
import math
import shutil
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from wmact_jax import main as main_mod
from wmact_jax.config_check import ConfigError
from wmact_jax.metrics import (format_postfix, read_jsonl, summary_markdown, to_host,
                               truncate_jsonl)

from .test_checkpointing import FakeTrainer, assert_identical, small_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


def loop_config(iterations=4, **over):
    c = small_config(**over)
    c.train.iterations = iterations
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
    c.train.eval_levels = 8
    c.train.transcripts = 2
    return c


class CrashingTrainer(FakeTrainer):
    """Dies (like a killed job) on its `crash_at`-th call of `iteration`."""
    crash_at = 3

    def iteration(self, state):
        if self.calls["iteration"] + 1 == self.crash_at:
            raise RuntimeError("simulated kill")
        return super().iteration(state)


def test_run_writes_everything(tmp_path):
    wd = str(tmp_path / "run")
    out = main_mod.run(loop_config(), wd, trainer_cls=FakeTrainer, progress=False)
    records = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    train_steps = [r["step"] for r in records if "success_rate" in r]
    assert train_steps == [1, 2, 3, 4]
    assert all("mean_turns" in r and "perf/iteration_seconds" in r for r in records if "loss" in r)
    assert any("warmstart/loss" in r for r in records)
    eval_steps = sorted({r["step"] for r in records if "eval/greedy/success_rate" in r})
    assert eval_steps == [0, 2, 4]
    assert all("eval/sampled/success_rate" in r for r in records if "eval/sampled/mean_turns" in r)
    assert any(r.get("eval/single_turn/turn_cap") == 1.0 for r in records)
    assert all(r["tokens_per_s"] > 0 for r in records if "generated_tokens" in r)
    assert [r["turn_hist"] for r in records if "turn_hist" in r][0] == [0.0, 1.0, 2.0]
    assert sorted(os.listdir(os.path.join(wd, "transcripts"))) == [
        "iter_00000.txt", "iter_00002.txt", "iter_00004.txt"]
    text = open(os.path.join(wd, "transcripts", "iter_00002.txt")).read()
    assert "| greedy | transcript 1\n" in text and "| sampled | transcript 0\n" in text
    assert "| single_turn |" in text and "transcript 2\n" not in text
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tb")))
    summary = open(os.path.join(wd, "summary.md")).read()
    assert "| greedy/success_rate |" in summary and "iteration 0" in summary
    assert "iteration 4" in summary and "checkpoints" in summary and "tensorboard" in summary
    assert out["before"]["step"] == 0 and out["after"]["step"] == 4
    cfg = json.load(open(os.path.join(wd, "config.json")))
    assert cfg["anneal"]["kind"] == "wmact"
    assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "4"


class ThreeArgTrainer(FakeTrainer):
    """The minimal evaluate signature: (state, num_levels, greedy)."""

    def evaluate(self, state, num_levels, greedy):
        return super().evaluate(state, num_levels, greedy, transcripts=1)


def test_minimal_evaluate_signature(tmp_path):
    out = main_mod.run(loop_config(2), str(tmp_path), trainer_cls=ThreeArgTrainer, progress=False)
    assert sorted(k.split("/")[0] for k in out["after"]["metrics"]) == ["greedy"] * 3 + ["sampled"] * 3


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    reference = main_mod.run(loop_config(6), str(tmp_path / "ref"), trainer_cls=FakeTrainer,
                             progress=False)["state"]
    wd = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="simulated kill"):  # dies during iteration 3
        main_mod.run(loop_config(6), wd, trainer_cls=CrashingTrainer, progress=False)
    calls = {}

    class Resumed(FakeTrainer):
        def __init__(self, *a):
            super().__init__(*a)
            calls["t"] = self.calls

    out = main_mod.run(loop_config(6), wd, trainer_cls=Resumed, progress=False)
    assert out["start"] == 2  # the latest checkpoint
    assert calls["t"]["warmstart"] == 0  # restored (init_state only traced by eval_shape)
    assert calls["t"]["iteration"] == 4
    assert_identical(out["state"], reference)
    records = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    steps = [r["step"] for r in records if "loss" in r and "warmstart/loss" not in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicates after the resume
    assert out["before"]["step"] == 0  # the iteration-0 evaluation survives the restart
    ref_records = read_jsonl(str(tmp_path / "ref" / "metrics.jsonl"))
    loss = lambda rs: [r["loss"] for r in rs if "loss" in r and r["step"] > 0]
    assert loss(records) == loss(ref_records)


class OverBoundTrainer(FakeTrainer):
    """Its fourth update (a checkpoint step) counts an episode over the LM head's bound (PPOConfig.max_trained)."""

    def iteration(self, state):
        state, metrics = super().iteration(state)
        return state, dict(metrics, max_trained_exceeded=float(self.calls["iteration"] == 4))


def test_an_update_over_its_token_bound_stops_before_its_state_is_saved(tmp_path):
    wd = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="iteration 4: an episode has more model tokens"):
        main_mod.run(loop_config(6), wd, trainer_cls=OverBoundTrainer, progress=False)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints")), key=int)[-1] == "2"


def test_extending_a_finished_run(tmp_path):
    wd = str(tmp_path / "run")
    main_mod.run(loop_config(2), wd, trainer_cls=FakeTrainer, progress=False)
    out = main_mod.run(loop_config(4), wd, trainer_cls=FakeTrainer, progress=False)
    assert out["start"] == 2 and out["after"]["step"] == 4


def test_bad_config_fails_before_work(tmp_path):
    c = loop_config()
    c.ppo.lrr = 1.0

    def boom(*a):
        raise AssertionError("the trainer must not be built")

    with pytest.raises(ConfigError, match="ppo.lr"):
        main_mod.run(c, str(tmp_path / "w"), trainer_cls=boom, progress=False)
    assert not (tmp_path / "w").exists()


def test_resume_with_other_model_refused(tmp_path):
    wd = str(tmp_path / "run")
    main_mod.run(loop_config(2), wd, trainer_cls=FakeTrainer, progress=False)
    from wmact_jax.checkpointing import CheckpointError
    with pytest.raises(CheckpointError, match="model.hidden_size"):
        main_mod.run(loop_config(4, model__hidden_size=16), wd, trainer_cls=FakeTrainer,
                     progress=False)


def _cli(args, cwd, trainer="fake", timeout=120):
    """Runs the real CLI entry point in a subprocess, with the fake trainer plugged in."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r}); sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from wmact_jax import main
        if {trainer!r} == "fake":
            from wmact.test_checkpointing import FakeTrainer
            main._default_trainer_cls = lambda: FakeTrainer
        else:
            def _no():
                raise AssertionError("trainer imported")
            main._default_trainer_cls = _no
        sys.argv = ["wmact_jax.main"] + {args!r}
        main.cli()
    """)
    return subprocess.run([PY, "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_typo_is_named(tmp_path):
    p = _cli(["--config=configs/default.py", "--config.ppo.lrr=1e-4",
              f"--workdir={tmp_path / 'w'}"], cwd=REPO, trainer="none")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "unknown field 'ppo.lrr'; did you mean 'ppo.lr'?" in p.stderr
    assert not (tmp_path / "w").exists()


def test_cli_preset_by_name_with_overrides(tmp_path):
    wd = tmp_path / "w"
    p = _cli(["--config=maze_scratch", "--config.model.hidden_size=8", "--config.train.iterations=2",
              "--config.train.eval_every=1", "--config.train.eval_levels=4",
              "--config.method=interactive", "--config.reward.rescale=True",
              f"--workdir={wd}"], cwd=str(tmp_path))  # another cwd: configs found anyway
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.load(open(wd / "config.json"))
    assert cfg["env"]["name"] == "Maze-7x7" and cfg["train"]["iterations"] == 2
    assert cfg["anneal"]["kind"] == "fixed"  # from method=interactive
    assert cfg["reward"]["rescale"] is True  # explicit on the command line: kept
    assert "| greedy/success_rate |" in p.stdout
    assert sorted(os.listdir(wd / "transcripts")) == ["iter_00000.txt", "iter_00001.txt",
                                                     "iter_00002.txt"]


def test_resolve_config_arg(tmp_path):
    r = main_mod.resolve_config_arg
    assert r(["x", "--config=taxi_smollm2"]) == ["x", f"--config={REPO}/configs/taxi_smollm2.py"]
    assert r(["--config=configs/taxi_smollm2.py"])[0].endswith("configs/taxi_smollm2.py")
    own = tmp_path / "mine.py"
    own.write_text("x")
    assert r([f"--config={own}"]) == [f"--config={own}"]
    assert r(["--config.ppo.lr=1"]) == ["--config.ppo.lr=1"]


def test_metrics_helpers(tmp_path):
    host = to_host({"a": jax.numpy.float32(0.5), "b": np.int32(3), "c": np.arange(3),
                    "d": np.zeros(1000), "e": True})
    assert host == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": 0.0, "e": True}
    assert format_postfix({"success_rate": 0.4567, "mean_turns": 3.21, "tokens_per_s": 12345.0}) \
        == "success 45.7% | turns 3.21 | 12.3k tok/s"
    assert format_postfix({"loss": 1.0}) == ""
    table = summary_markdown({"greedy/success_rate": 0.1, "x": "text", "greedy/cycled": 0.5, "greedy/generated": 9},
                             {"greedy/success_rate": 0.6, "greedy/mean_turns": 2.0, "greedy/cycled": 0.25}, 0, 100)
    assert "| greedy/success_rate | 0.1 | 0.6 | +0.5 |" in table
    assert "| greedy/mean_turns | - | 2 | - |" in table
    assert "| greedy/cycled | 0.5 | 0.25 | -0.25 |" in table and "generated" not in table
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "cut')
    truncate_jsonl(str(path), 2)
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]


def test_nan_is_null_in_jsonl(tmp_path):
    from wmact_jax.metrics import MetricsWriter
    with MetricsWriter(str(tmp_path)) as w:
        w.write(1, {"loss": float("nan")})
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert rec["loss"] is None
    assert math.isnan(to_host({"x": np.float32("nan")})["x"])


def test_disabled_writer_writes_nothing(tmp_path):
    from wmact_jax.metrics import MetricsWriter
    w = MetricsWriter(str(tmp_path / "x"), enabled=False)
    assert w.write(1, {"a": 1.0}) == {"a": 1.0}
    w.close()
    assert not (tmp_path / "x").exists()


def test_fresh_start_sets_stale_metrics_aside(tmp_path):
    """A run directory with metrics but no checkpoint (e.g. copied without them) starts clean:
    the old records are kept under another name, never mixed into the new run's."""
    wd = str(tmp_path / "run")
    main_mod.run(loop_config(iterations=2), wd, trainer_cls=FakeTrainer, progress=False)
    shutil.rmtree(os.path.join(wd, "checkpoints"))
    main_mod.run(loop_config(iterations=2), wd, trainer_cls=FakeTrainer, progress=False)
    records = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    assert [r["step"] for r in records if "success_rate" in r] == [1, 2]
    assert any(n.startswith("metrics.jsonl.stale-") for n in os.listdir(wd))


def test_eval_modes_and_transfer_follow_the_config(tmp_path):
    c = loop_config(iterations=1)
    c.train.eval_modes = ("greedy",)
    c.train.eval_before = False
    out = main_mod.run(c, str(tmp_path / "run"), trainer_cls=FakeTrainer, progress=False)
    assert out["before"]["metrics"] == {}
    assert {k.split("/")[0] for k in out["after"]["metrics"]} == {"greedy"}


def test_the_starting_cap_is_evaluated_where_the_cap_moves():
    """greedy_l0 (greedy at L_0, the budget every method starts from) runs for the annealed methods and
    is skipped where the cap never moves: there it would replay `greedy` on the same levels."""
    from wmact_jax.config_check import prepare_config

    class Evaluates:
        def evaluate(self, state, num_levels=None, greedy=True, single_turn=False, initial_cap=False,
                     transcripts=0):
            raise AssertionError("not called")

    modes = {}
    for method in ("interactive", "rescale", "step_penalty", "entire_plan", "anneal", "wmact"):
        c = small_config()
        c.method = method
        modes[method] = [m for m, _ in main_mod._eval_modes(Evaluates(), prepare_config(c))]
    assert modes["wmact"] == modes["anneal"] == ["greedy", "sampled", "single_turn", "greedy_l0"]
    assert modes["interactive"] == modes["rescale"] == modes["step_penalty"] == ["greedy", "sampled", "single_turn"]
    assert modes["entire_plan"] == ["greedy", "sampled"]
    # A run that anneals on another schedule still has a cap that moves.
    c = small_config()
    c.method, c.anneal.kind = "interactive", "linear"
    assert "greedy_l0" in [m for m, _ in main_mod._eval_modes(Evaluates(), prepare_config(c, {"anneal.kind"}))]


def test_final_evaluation_on_more_levels(tmp_path):
    """train.final_eval_levels: the warm start and the final policy evaluated again, in every mode, on more
    levels (a second trainer built for that count) into eval_<N>.json; a kill between the two keeps the
    first; off where the count is the run's own."""
    built = []

    class Counting(FakeTrainer):
        def __init__(self, config, workdir):
            super().__init__(config, workdir)
            built.append(int(config.train.eval_levels))

    ref_dir, wd = str(tmp_path / "ref"), str(tmp_path / "run")
    ref = main_mod.run(loop_config(6, train__final_eval_levels=16), ref_dir, trainer_cls=Counting, progress=False)
    assert built == [8, 16]  # the run's trainer, then one for the larger count
    more = json.load(open(os.path.join(ref_dir, "eval_16.json")))
    assert more["eval_levels"] == 16 and more["method"] == "wmact"
    assert more["before"]["step"] == 0 and more["after"]["step"] == 6
    for part in ("before", "after"):
        mine, own = more[part]["metrics"], ref[part]["metrics"]
        assert mine.keys() == own.keys()  # every mode of the run's own evaluation
        assert mine["greedy/mean_turns"] == own["greedy/mean_turns"]
        assert mine["greedy/success_rate"] != own["greedy/success_rate"]  # on other levels
    with pytest.raises(RuntimeError, match="simulated kill"):
        main_mod.run(loop_config(6, train__final_eval_levels=16), wd, trainer_cls=CrashingTrainer, progress=False)
    assert "after" not in json.load(open(os.path.join(wd, "eval_16.json")))
    main_mod.run(loop_config(6, train__final_eval_levels=16), wd, trainer_cls=FakeTrainer, progress=False)
    assert json.load(open(os.path.join(wd, "eval_16.json")))["before"] == more["before"]
    # The run's own count, or 0: no second evaluation.
    built.clear()
    main_mod.run(loop_config(2, train__final_eval_levels=8), str(tmp_path / "own"), trainer_cls=Counting,
                 progress=False)
    assert built == [8] and not any(n.startswith("eval_") and n != "eval_initial.json"
                                    for n in os.listdir(tmp_path / "own"))
    with pytest.raises(ConfigError, match="train.final_eval_levels"):
        main_mod.run(loop_config(2, train__final_eval_levels=-1), str(tmp_path / "bad"), trainer_cls=Counting,
                     progress=False)


class PerLevelTrainer(FakeTrainer):
    """Also `evaluate_levels`: each level's episode beside the metrics (made-up: level i solved when i is
    even, in i % 3 + 1 turns)."""

    def evaluate_levels(self, state, num_levels=None, greedy=True, single_turn=False, initial_cap=False):
        m, _ = self.evaluate(state, num_levels, greedy, single_turn)
        n = num_levels or self.config.train.eval_levels
        return m, {"solved": [int(i % 2 == 0) for i in range(n)], "turns": [i % 3 + 1 for i in range(n)],
                   "end": ["solved" if i % 2 == 0 else "turn_cap" for i in range(n)]}


def test_the_final_evaluation_keeps_each_levels_episode(tmp_path):
    """A trainer with `evaluate_levels`: eval_<N>.json keeps every mode's per-level lists, before and after,
    one list a line; a trainer without it keeps the metrics alone (test above)."""
    wd = str(tmp_path / "run")
    main_mod.run(loop_config(2, train__final_eval_levels=16), wd, trainer_cls=PerLevelTrainer, progress=False)
    text = open(os.path.join(wd, "eval_16.json")).read()
    record = json.loads(text)
    for part in ("before", "after"):
        per = record[part]["levels"]
        assert set(per) == {k.split("/")[0] for k in record[part]["metrics"]}  # every mode
        assert per["greedy"]["solved"] == [1, 0] * 8 and per["sampled"]["turns"][:4] == [1, 2, 3, 1]
    assert '"solved": [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]' in text
    assert '"end": ["solved", "turn_cap", "solved"' in text
    assert len(text.splitlines()) < 120  # not one line per number
