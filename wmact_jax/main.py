"""Command-line entry point: one WMAct (or baseline) training run.

    python -m wmact_jax.main --config=configs/sokoban_scratch.py --workdir=runs/sokoban \
        --config.ppo.lr=3e-4 --config.method=interactive

`--config` is a config file path (any file whose `get_config()` returns a full config), or the name
of a preset in `configs/` (``--config=maze_scratch``). Every field is overridable with
``--config.<section>.<field>=value``; typos are reported with the closest valid name before any work.

The run: distributed init (if configured) -> config check and method presets -> Trainer -> resume
from the latest checkpoint in ``workdir/checkpoints`` (or init + warm start) -> iterations with a
progress bar -> metrics to ``workdir/metrics.jsonl`` and TensorBoard ``workdir/tb`` -> evaluations
(greedy and sampled, ``eval/`` prefix, transcripts in ``workdir/transcripts/``) -> checkpoints ->
a before/after table in ``workdir/summary.md``. Re-running the same command resumes.

What this expects of the Trainer (``wmact_jax.train.Trainer``):
  Trainer(config, workdir); init_state(key) -> pytree with an int32 scalar ``iteration``;
  warmstart(state) -> (state, metrics); iteration(state) -> (state, metrics) advancing
  ``iteration`` by one; evaluate(state, num_levels, greedy) -> (metrics, transcripts: list[str]).
  Metrics are dicts of scalar (or small) arrays; 'success_rate', 'mean_turns', 'tokens_per_s' are
  shown live. All processes call every method (they may run collectives); only process 0 logs.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import sys
import time
from typing import Any, Callable, Iterable

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Config files do `from configs import base`: make that work from any working directory.
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wmact_jax import config_check, distributed  # noqa: E402
from wmact_jax.checkpointing import CheckpointError  # noqa: E402
from wmact_jax.metrics import MetricsWriter, format_postfix, summary_markdown, to_host  # noqa: E402

CONFIGS_DIR = os.path.join(_REPO_ROOT, "configs")
DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, "default.py")
DEFAULT_WORKDIR = "runs/default"

_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Config file path, or a preset name from configs/ (e.g. maze_scratch).",
    lock_config=False, accept_new_attributes=True)  # unknown fields reach check_config (hints)
_WORKDIR = flags.DEFINE_string("workdir", DEFAULT_WORKDIR,
                               "Run directory: logs, checkpoints, transcripts, summary. "
                               "An existing run there is resumed.")


def resolve_config_arg(argv: list[str]) -> list[str]:
    """Rewrites ``--config=NAME`` to ``configs/NAME.py`` when NAME is not an existing file."""
    out = []
    for i, arg in enumerate(argv):
        for prefix in ("--config=", "-config="):
            if arg.startswith(prefix):
                value = arg[len(prefix):]
                path, sep, rest = value.partition(":")  # config_flags' "file.py:arg" syntax
                if not os.path.exists(path):
                    name = path[:-3] if path.endswith(".py") else path
                    candidate = os.path.join(CONFIGS_DIR, os.path.basename(name) + ".py")
                    if os.path.exists(candidate):
                        arg = prefix + candidate + sep + rest
        out.append(arg)
    return out


def _default_trainer_cls():
    from wmact_jax.train import Trainer  # imported late: a bad config fails before this import
    return Trainer


def _eval_modes(trainer, config) -> list[tuple[str, dict]]:
    """(name, evaluate kwargs) of `config.train.eval_modes`: greedy and sampled at the turn cap,
    greedy with a one-turn cap (WMAct's goal: solving from the internal world model alone), greedy
    at the starting cap L_0 (`greedy_l0`: the same budget before and after annealing, every method's
    budget alike; skipped where the cap never moves, `anneal.kind='fixed'`, as it would repeat `greedy`),
    and greedy on every `config.env.eval_names` environment (transfer) as mode `transfer/<name>`.
    Modes the Trainer's `evaluate` cannot run (no such keyword) are skipped."""
    params = inspect.signature(trainer.evaluate).parameters
    extra = {"transcripts": config.train.transcripts} if "transcripts" in params else {}
    wanted = tuple(config.train.eval_modes)
    modes = []
    if "greedy" in wanted:
        modes.append(("greedy", dict(greedy=True, **extra)))
    if "sampled" in wanted:
        modes.append(("sampled", dict(greedy=False, **extra)))
    if "single_turn" in wanted and "single_turn" in params and config.method != "entire_plan":
        modes.append(("single_turn", dict(greedy=True, single_turn=True, **extra)))
    if "greedy_l0" in wanted and "initial_cap" in params and config.anneal.kind != "fixed":
        modes.append(("greedy_l0", dict(greedy=True, initial_cap=True, **extra)))
    if "env_name" in params:
        for name in config.env.eval_names:
            if name != config.env.name:
                modes.append((f"transfer/{name}", dict(greedy=True, env_name=name, **extra)))
    return modes


def _evaluate(trainer, state, config, step: int, writer: MetricsWriter, workdir: str,
              is_main: bool) -> dict[str, Any]:
    """Runs every evaluation mode; logs `eval/<mode>/<metric>`, writes the transcripts file.

    Returns {'<mode>/<metric>': value} (host numbers).
    """
    results: dict[str, Any] = {}
    texts: list[str] = []
    for mode, kwargs in _eval_modes(trainer, config):
        metrics, transcripts = trainer.evaluate(state, config.train.eval_levels, **kwargs)
        host = writer.write(step, metrics, prefix=f"eval/{mode}/")
        results.update({f"{mode}/{k}": v for k, v in host.items()})
        for i, t in enumerate(list(transcripts or [])[: config.train.transcripts]):
            texts.append(f"##### iteration {step} | {mode} | transcript {i}\n{t}\n")
    if is_main and texts:
        tdir = os.path.join(workdir, "transcripts")
        os.makedirs(tdir, exist_ok=True)
        with open(os.path.join(tdir, f"iter_{step:05d}.txt"), "w") as f:
            f.write("\n".join(texts))
        writer.write_text(step, "eval/transcript", texts[0])
    return results


def evaluate_modes(trainer, state, config, transfer: bool = True) -> tuple[dict[str, float], dict[str, dict]]:
    """({'<mode>/<metric>': value}, {mode: per-level lists}) over the run's evaluation modes on
    `config.train.eval_levels` levels (the trainer's: its evaluation shapes are static), no transcripts,
    nothing logged; transfer modes only with `transfer`. The per-level lists are `Trainer.evaluate_levels`'
    (each level's episode), empty for a trainer without it. What `train.final_eval_levels` and
    experiments/reevaluate.py record."""
    out, levels = {}, {}
    per_level = getattr(trainer, "evaluate_levels", None)
    for mode, kwargs in _eval_modes(trainer, config):
        if mode.startswith("transfer/") and not transfer:
            continue
        kwargs.pop("transcripts", None)
        if per_level is not None:
            metrics, levels[mode] = per_level(state, config.train.eval_levels, **kwargs)
        else:
            metrics, _ = trainer.evaluate(state, config.train.eval_levels, **kwargs)
        out.update({f"{mode}/{k}": v for k, v in to_host(metrics).items()})
    return out, levels


def eval_levels_file(workdir: str, levels: int) -> str:
    """Where a run's evaluation on `levels` held-out levels beyond its own count is kept."""
    return os.path.join(workdir, f"eval_{int(levels)}.json")


def eval_levels_record(levels: int, method: str, after: dict | None = None, before: dict | None = None,
                       seconds: float | None = None) -> dict[str, Any]:
    """The `eval_<N>.json` record, for both of its writers (`train.final_eval_levels` here and
    experiments/reevaluate.py): {eval_levels, method, [after], [before], [seconds]}, where `after` and
    `before` are {"step", "metrics", ["levels"]} (the policy after RL; the warm start, step 0), "levels"
    {mode: per-level lists} (`evaluate_modes`). experiments/report.py and experiments/levels.py read it."""
    out: dict[str, Any] = {"eval_levels": int(levels), "method": str(method)}
    for key, part in (("after", after), ("before", before)):
        if part is not None:
            out[key] = {"step": int(part["step"]), "metrics": part["metrics"]}
            if part.get("levels"):
                out[key]["levels"] = part["levels"]
    if seconds is not None:
        out["seconds"] = float(seconds)
    return out


class _FinalLevels:
    """`train.final_eval_levels`: the run's policy before RL and after it evaluated again, in every mode,
    on that many held-out levels (the first `train.eval_levels` of them are the run's own), into
    `eval_<N>.json` (experiments/report.py tables it; the format of experiments/reevaluate.py). The
    evaluation's shapes are static, so this is a second Trainer built for N levels, made at first use."""

    def __init__(self, config, workdir: str, trainer_cls, is_main: bool):
        self.levels = int(config.train.final_eval_levels)
        self.enabled = self.levels > 0 and self.levels != int(config.train.eval_levels)
        self.path = eval_levels_file(workdir, self.levels) if self.enabled else ""
        self.config, self.trainer_cls, self.is_main = config, trainer_cls, is_main
        self._trainer, self._before = None, None

    def _evaluate(self, state, step: int) -> dict[str, Any]:
        if self._trainer is None:
            self._eval_config = self.config.copy_and_resolve_references()
            self._eval_config.train.eval_levels, self._eval_config.train.transcripts = self.levels, 0
            self._trainer = self.trainer_cls(self._eval_config, "")
        metrics, levels = evaluate_modes(self._trainer, state, self._eval_config)
        return {"step": step, "metrics": metrics, "levels": levels}

    def before(self, state) -> None:
        """At iteration 0: the warm-started policy, kept in the file until the run ends."""
        if self.enabled:
            self._before = self._evaluate(state, 0)
            if self.is_main:
                _write_json(self.path, eval_levels_record(self.levels, self.config.method, before=self._before),
                            compact_lists=True)

    def resumed(self) -> None:
        """A resumed run: the `before` an earlier process of this run wrote survives."""
        if self.enabled and self.is_main and os.path.exists(self.path):
            with open(self.path) as f:
                part = json.load(f).get("before") or {}
            self._before = part if part.get("step") == 0 else None

    def after(self, state, step: int) -> None:
        """At the end: the final policy, and the warm start's evaluation if this run made one."""
        if not self.enabled:
            return
        t0 = time.time()
        after = self._evaluate(state, step)
        if self.is_main:
            _write_json(self.path, eval_levels_record(self.levels, self.config.method, after, self._before,
                                                      time.time() - t0), compact_lists=True)


def _saved_steps(ckpt_dir: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _write_json(path: str, obj: Any, compact_lists: bool = False) -> None:
    """Atomic write (a kill leaves the old file or the new one). compact_lists: lists of numbers or strings
    on one line (per-level records: 256 numbers a list)."""
    text = json.dumps(obj, indent=1, default=str)
    if compact_lists:
        text = _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]", text)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_SCALAR = r'(?:-?[0-9][0-9.eE+-]*|"[^"\n]*"|null|true|false)'
_SCALAR_LIST = re.compile(r"\[\s*\n\s*(" + _SCALAR + r"(?:,\s*\n\s*" + _SCALAR + r")*)\s*\n\s*\]")


def run(config: ml_collections.ConfigDict, workdir: str, *, explicit: Iterable[str] = (),
        trainer_cls: Callable[..., Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Trains (or resumes) a run in `workdir`; returns {'before', 'after', 'summary', ...}.

    Args:
      config: the run config (method presets are applied here; `explicit` names the fields the
        user set on the command line, which the method presets leave alone).
      workdir: the run directory; an existing checkpoint there is resumed.
      trainer_cls: `Trainer`-shaped class or factory `(config, workdir) -> trainer` (default
        `wmact_jax.train.Trainer`); tests pass a fake, experiments/run.py a pool of rebound trainers.
    """
    # Distributed init must precede any backend use (the config check imports envs_jax).
    distributed.maybe_initialize(config)
    config = config_check.prepare_config(config, explicit)
    import jax

    from wmact_jax.checkpointing import Checkpointer

    config_check.check_config(config, num_devices=jax.device_count())
    is_main = distributed.is_main_process()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
        print(f"run directory {workdir}: metrics.jsonl, tb/ (TensorBoard), checkpoints/, "
              "transcripts/, summary.md", flush=True)
        logging.info("config (method %s resolved):\n%s", config.method, config)

    trainer = (trainer_cls or _default_trainer_cls())(config, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(ckpt_dir, config, max_to_keep=config.train.keep_checkpoints,
                        save_interval_steps=config.train.checkpoint_every)
    key = jax.random.key(config.seed)
    latest = ckpt.latest_step()
    initial_path = os.path.join(workdir, "eval_initial.json")
    if latest is not None:
        state = ckpt.restore(jax.eval_shape(trainer.init_state, key), latest)
        start = int(jax.device_get(state.iteration))
        logging.info("resumed from %s/%d (iteration %d)", ckpt_dir, latest, start)
        writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)
    else:
        stale = os.path.join(workdir, "metrics.jsonl")
        if is_main and os.path.exists(stale):  # metrics of a run whose checkpoints are gone: keep, set aside
            os.replace(stale, f"{stale}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        writer = MetricsWriter(workdir, enabled=is_main)
        state = trainer.init_state(key)
        if config.warmstart.enabled or config.warmstart.path:
            t0 = time.time()
            state, wm = trainer.warmstart(state)
            wm = dict(wm or {})
            wm["seconds"] = time.time() - t0
            # Under warmstart/ once (the warm start's own metrics already carry the prefix).
            writer.write(0, {k if k.startswith("warmstart/") else f"warmstart/{k}": v for k, v in wm.items()})
        start = int(jax.device_get(state.iteration))
        ckpt.save(start, state, force=True)  # a kill during RL never repeats the warm start

    total = config.train.iterations
    before = None
    final_levels = _FinalLevels(config, workdir, trainer_cls or _default_trainer_cls(), is_main)
    if start == 0 and config.train.eval_before:  # decided alike on every process (evaluate may run collectives)
        before = {"step": 0, "metrics": _evaluate(trainer, state, config, 0, writer, workdir, is_main)}
        if is_main:
            _write_json(initial_path, before)
        final_levels.before(state)
    else:
        if is_main and os.path.exists(initial_path):  # resumed: the "before" column survives
            with open(initial_path) as f:
                before = json.load(f)
        if latest is not None:
            final_levels.resumed()

    step = start
    bar = None
    if progress and is_main:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=min(start, total), desc=f"{config.method} {config.env.name}",
                   unit="it", dynamic_ncols=True)
    try:
        for it in range(start, total):
            t0 = time.time()
            state, metrics = trainer.iteration(state)
            host = to_host(metrics)  # also waits for the device
            if host.get("max_trained_exceeded", 0.0) > 0:  # before this state is saved: its update read wrong log-probs
                raise RuntimeError(
                    f"iteration {it + 1}: an episode has more model tokens than the update's bound max_trained="
                    f"{getattr(getattr(trainer, 'ppo_cfg', None), 'max_trained', '?')} (turns x "
                    "rollout.max_turn_tokens), so its log-probs were read wrong: a bug of the rollout's "
                    "shapes; set model.trained_logits_only=False to train at every position")
            step = it + 1
            seconds = time.time() - t0
            host["perf/iteration_seconds"] = seconds
            if "tokens_per_s" not in host and isinstance(host.get("generated_tokens"), (int, float)):
                host["tokens_per_s"] = host["generated_tokens"] / max(seconds, 1e-9)
            if step % config.train.log_every == 0 or step == total:
                writer.write(step, host)
            if bar is not None:
                bar.set_postfix_str(format_postfix(host), refresh=False)
                bar.update(1)
            ckpt.save(step, state)
            if config.train.eval_every and step % config.train.eval_every == 0 and step != total:
                _evaluate(trainer, state, config, step, writer, workdir, is_main)
        if bar is not None:
            bar.close()
            bar = None
        step = max(step, start)
        after = {"step": step,
                 "metrics": _evaluate(trainer, state, config, step, writer, workdir, is_main)}
        ckpt.save(step, state, force=True)
        final_levels.after(state, step)
    except KeyboardInterrupt:
        logging.warning("interrupted at iteration %d: saving a checkpoint", step)
        ckpt.save(step, state, force=True)
        raise
    finally:  # also on a crash: let in-flight checkpoint writes finish, flush the logs
        if bar is not None:
            bar.close()
        ckpt.close()
        writer.close()

    if before is None:  # not run (train.eval_before=False) or lost (e.g. a workdir copied without it)
        before = {"step": None, "metrics": {}}
    table = summary_markdown(before["metrics"], after["metrics"], before["step"], after["step"])
    locations = "\n".join([
        f"- metrics: {writer.jsonl_path}",
        f"- TensorBoard: tensorboard --logdir {writer.tb_dir}",
        f"- checkpoints: {ckpt_dir} (steps {_saved_steps(ckpt_dir)})",
        f"- transcripts: {os.path.join(workdir, 'transcripts')}",
        f"- config: {os.path.join(workdir, 'config.json')}",
    ])
    summary = (f"# {config.method} on {config.env.name}\n\n"
               f"Evaluation on {config.train.eval_levels} levels, before RL vs after "
               f"{step} iterations.\n\n{table}\n\n## Where things are\n{locations}\n")
    if is_main:
        with open(os.path.join(workdir, "summary.md"), "w") as f:
            f.write(summary)
        print("\n" + summary, flush=True)
    return {"before": before, "after": after, "summary": summary, "state": state,
            "config": config, "start": start}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO: keep the terminal readable
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    explicit = config_flags.get_override_values(flags.FLAGS["config"]).keys()
    try:
        run(config, _WORKDIR.value, explicit=explicit)
    except (config_check.ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    sys.argv = resolve_config_arg(sys.argv)  # config_flags also reads sys.argv for overrides
    app.run(main)


if __name__ == "__main__":
    cli()
