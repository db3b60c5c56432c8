"""One WMAct training iteration, split into rollout and PPO update: in-graph rollout vs a host loop.

Both sides use the SAME Trainer (model, params, tokenizer, codecs, static shapes, sampler, PRNG keys):

- in-graph: `trainer.rollout.run` under one `jax.jit` (decode, answer parsing, env steps, feedback
  tokens and the next turn's prefill all on device, one `lax.while_loop` over turns);
- host loop (RAGEN / verl-agent style, `benchmarks/host_loop_rollout.py`): each turn the jitted sampler
  (`sampler.prefill_fn` / `decode_fn`, KV cache kept on device) generates; Python detokenizes, parses
  with the regex `codec.parse_answer_text`, steps each episode with the environment's `step_env` jitted
  for ONE episode (one call + sync per action), renders the grid as text and tokenizes the feedback
  with `tokenizer.encode`, then prefills it.

The update is `trainer._ppo_batch` (rewards; the old log-probs/values come from the sampler unless ppo.recompute_old) + `trainer._update` (PPO
epochs x minibatches), jitted once and fed each side's batch (same shapes, so the same cost: --quick
times it on the in-graph batch only). Default mode measures the random (untrained) model, where nearly
every answer is malformed and no action runs, then warm-starts it on oracle demonstrations
(`trainer.warmstart`, 100 steps x 8 demonstrations) so that answers parse and actions really run, and measures again.

    python benchmarks/train_iteration.py              # random + warm-started model, 64 episodes, 8 turns
    python benchmarks/train_iteration.py --quick      # random model only, turn cap 4, 1 repeat
    python benchmarks/train_iteration.py --smollm2    # + SmolLM2-135M, 8 episodes, 2 turns (slow on CPU)

Figures: seconds per rollout / update (mean over repeats, each repeat a fresh set of levels, the same
keys for both sides), generated tokens/s and executed env steps/s of the rollout, mean turns per
episode, format error rate (malformed answers / turns). The host loop's time is also broken down into
device (decode, prefill) and host (parse, env steps, render + tokenize, reset + prompt) parts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from host_loop_rollout import HostLoopRollout  # noqa: E402


def _load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def make_config(args, smollm2: bool):
    from configs.base import get_config

    c = get_config()
    c.env.name = args.env
    c.warmstart.enabled = False
    if smollm2:
        c.model.source = "pretrained"
        c.model.path = "smollm2-135m-instruct"
        c.model.dtype = "float32"
        c.rollout.levels_per_iteration, c.rollout.group_size = 2, 4  # 8 episodes
        c.anneal.l0 = args.smollm2_turns
        c.rollout.max_turn_tokens = args.smollm2_turn_tokens
        c.rollout.context_len = 1024
        c.rollout.system_prompt = "full"
        c.ppo.epochs, c.ppo.minibatches = 1, 2
    else:
        c.rollout.levels_per_iteration, c.rollout.group_size = args.levels, args.group
        if args.turns:
            c.anneal.l0 = args.turns
    return c


def batch_stats(b) -> dict:
    b = jax.device_get(b)
    turns = float(np.sum(b.turns))
    return dict(generated=float(np.sum(b.generated)), actions=float(np.sum(b.n_actions)), turns=turns,
                episodes=int(b.turns.shape[0]), format_errors=float(np.sum(b.format_errors)),
                success=float(np.mean(b.success)))


class Side:
    def __init__(self, name):
        self.name = name
        self.rollout_s, self.update_s = [], []
        self.stats = []
        self.update_ref = float("nan")  # update seconds when not timed on this side's batch (same program)

    def row(self):
        s = {k: sum(x[k] for x in self.stats) for k in ("generated", "actions", "turns", "format_errors", "success")}
        n = len(self.stats)
        ep = self.stats[0]["episodes"]
        r = float(np.mean(self.rollout_s))
        u = float(np.mean(self.update_s)) if self.update_s else self.update_ref
        tot_r = float(np.sum(self.rollout_s))
        return dict(name=self.name, rollout=r, update=u, iteration=r + u, tok_s=s["generated"] / tot_r,
                    steps_s=s["actions"] / tot_r, turns=s["turns"] / (n * ep),
                    fmt=s["format_errors"] / max(s["turns"], 1), success=s["success"] / n,
                    tokens=s["generated"] / n, steps=s["actions"] / n)


_PROGRAMS = {}
_COMPILED = set()


def _programs(trainer):
    """(jitted in-graph rollout, jitted update, host loop) of a trainer, built once (compiled once)."""
    if id(trainer) not in _PROGRAMS:
        sampling = trainer.sampling
        roll_jit = jax.jit(lambda p, k, cap: trainer.rollout.run(p, k, cap, sampling)[0])

        def upd(ppo_state, ref, batch, key):
            data, _ = trainer._ppo_batch(ppo_state.params, ref, batch, trainer.switches)
            new, m = trainer._update(ppo_state, data, key)
            return new.params, m

        _PROGRAMS[id(trainer)] = (roll_jit, jax.jit(upd), HostLoopRollout.from_trainer(trainer))
    return _PROGRAMS[id(trainer)]


def measure(trainer, state, label: str, repeats: int, update_repeats: int = 1, host_update: bool = True, log=print):
    """-> (in-graph Side, host Side, host-loop timers per rollout). The update (same shapes, same cost for
    both sides) is timed on the first `update_repeats` batches of each side."""
    params = state.ppo.params
    cap = trainer.turn_cap(state)
    sampling = trainer.sampling
    roll_jit, upd_jit, host = _programs(trainer)
    keys = [jax.random.PRNGKey(1000 + i) for i in range(repeats + 1)]
    ukey = jax.random.PRNGKey(7)

    # Warm-up: compile everything (key 0 is not timed; the update compiles once per trainer).
    t0 = time.perf_counter()
    b = roll_jit(params, keys[0], cap)
    jax.block_until_ready(b)
    t_compile_roll = time.perf_counter() - t0
    t_compile_upd = 0.0
    if id(upd_jit) not in _COMPILED:
        t0 = time.perf_counter()
        jax.block_until_ready(upd_jit(state.ppo, state.ref_params, b, ukey))
        t_compile_upd = time.perf_counter() - t0
        _COMPILED.add(id(upd_jit))
    t0 = time.perf_counter()
    host.run(params, keys[0], cap, sampling)
    t_host_first = time.perf_counter() - t0
    log(f"# [{label}] warm-up (compile + first run): in-graph rollout {t_compile_roll:.1f}s, update "
        f"{t_compile_upd:.1f}s, host loop {t_host_first:.1f}s; turn cap {cap}; load {_load()}")

    ig, hl = Side("in-graph"), Side("host loop")
    host.timers.clear()
    for i, k in enumerate(keys[1:]):
        # in-graph
        t0 = time.perf_counter()
        b = roll_jit(params, k, cap)
        jax.block_until_ready(b)
        ig.rollout_s.append(time.perf_counter() - t0)
        ig.stats.append(batch_stats(b))
        if i < update_repeats:
            t0 = time.perf_counter()
            jax.block_until_ready(upd_jit(state.ppo, state.ref_params, b, ukey))
            ig.update_s.append(time.perf_counter() - t0)
        # host loop (its batch goes through the same update: host -> device copy included)
        t0 = time.perf_counter()
        hb = host.run(params, k, cap, sampling)
        hl.rollout_s.append(time.perf_counter() - t0)
        hl.stats.append(batch_stats(hb))
        if i < update_repeats and host_update:
            t0 = time.perf_counter()
            hb_dev = jax.device_put(hb)
            jax.block_until_ready(upd_jit(state.ppo, state.ref_params, hb_dev, ukey))
            hl.update_s.append(time.perf_counter() - t0)
    if not hl.update_s:
        hl.update_ref = float(np.mean(ig.update_s))
    timers = {k: v / repeats for k, v in host.timers.items()}
    return ig, hl, timers


def fused_iteration_seconds(trainer, state, repeats: int) -> float:
    """`trainer.iteration` (rollout + rewards + update + annealing in ONE jit), mean seconds."""
    st = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    st, m = trainer.iteration(st)
    jax.block_until_ready(m)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        st, m = trainer.iteration(st)
        jax.block_until_ready(m)
        ts.append(time.perf_counter() - t0)
    return float(np.mean(ts))


def print_table(title, ig, hl, timers, fused=None):
    a, b = ig.row(), hl.row()
    print(f"\n### {title}\n")
    print("| rollout | rollout s | update s | iteration s | gen tokens/s | env steps/s | turns/ep | "
          "format err | success | tokens/rollout | env steps/rollout |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (a, b):
        print(f"| {r['name']} | {r['rollout']:.2f} | {r['update']:.2f} | {r['iteration']:.2f} | {r['tok_s']:.0f} | "
              f"{r['steps_s']:.1f} | {r['turns']:.2f} | {r['fmt']:.2f} | {r['success']:.2f} | {r['tokens']:.0f} | "
              f"{r['steps']:.0f} |")
    sp = b["rollout"] / a["rollout"]
    print(f"| **speed-up (host / in-graph)** | **{sp:.2f}x** | {b['update'] / a['update']:.2f}x | "
          f"{b['iteration'] / a['iteration']:.2f}x | | | | | | | |")
    if fused is not None:
        print(f"\nfused `trainer.iteration` (rollout + update in one jit): {fused:.2f} s")
    tot = b["rollout"]
    parts = ", ".join(f"{k} {v:.2f}s ({100 * v / tot:.0f}%)" for k, v in sorted(timers.items(), key=lambda kv: -kv[1])
                      if k != "total")
    print(f"\nhost loop rollout {tot:.2f}s = {parts}")
    dev = timers.get("device_decode", 0) + timers.get("device_prefill", 0)
    print(f"host loop device-only time (decode + prefill, syncs included) {dev:.2f}s vs in-graph rollout "
          f"{a['rollout']:.2f}s; host-side work {tot - dev:.2f}s")
    return sp


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="random model only, turn cap 4, 1 repeat")
    ap.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (8 episodes, few turns; slow)")
    ap.add_argument("--env", default="Sokoban-6x6-1")
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--turns", type=int, default=0, help="turn cap L_max (0 = config default 8; quick 4)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rollouts per side (default 2; quick 1)")
    ap.add_argument("--warmstart-steps", type=int, default=100)
    ap.add_argument("--warmstart-levels", type=int, default=300)
    ap.add_argument("--warmstart-batch", type=int, default=8)
    ap.add_argument("--fused", action="store_true", help="also time the fused trainer.iteration (compiles again)")
    ap.add_argument("--no-random", action="store_true", help="skip the random-model measurement (default mode)")
    ap.add_argument("--smollm2-turns", type=int, default=2)
    ap.add_argument("--smollm2-turn-tokens", type=int, default=48)
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    if args.quick and not args.turns:
        args.turns = 4

    from wmact_jax.train import Trainer

    t_start = time.perf_counter()
    threads = os.environ.get("XLA_FLAGS", "")
    print(f"# wmact-jax train_iteration benchmark: jax {jax.__version__}, devices {jax.devices()}, "
          f"cpus {os.cpu_count()}, python {platform.python_version()}, {platform.machine()} {threads}")
    print(f"# load average at start: {_load()}")
    c = make_config(args, smollm2=False)
    trainer = Trainer(c)
    mc = trainer.model_config
    nparams = sum(x.size for x in jax.tree.leaves(trainer._init_params))
    rc = trainer.rollout_cfg
    print(f"# model: scratch hidden {mc.hidden_size}, {mc.num_layers} layers, {nparams / 1e6:.2f}M params, "
          f"vocab {mc.vocab_size}, {c.model.dtype}")
    print(f"# rollout: {c.env.name}, {rc.num_levels} levels x {rc.group_size} = {rc.num_episodes} episodes, "
          f"turn cap {rc.max_turns}, {rc.max_turn_tokens} tokens/turn, K={rc.max_actions_per_turn}, "
          f"context {rc.context_len}, prompt <= {trainer.conv.max_prompt_len} tokens, feedback <= "
          f"{trainer.conv.max_feedback_len}; sampling temperature {c.rollout.temperature}")
    print(f"# update: PPO {c.ppo.epochs} epochs x {c.ppo.minibatches} minibatches over the {rc.num_episodes} x "
          f"{rc.context_len} token batch (old log-probs/values: "
          f"{'an extra forward pass' if trainer.config.ppo.recompute_old else 'from the sampler'})")
    print(f"# host loop: per-episode jitted env.step_env / render_glyphs (JAX env, one call + sync per action), "
          f"regex parse_answer_text, tokenizer.encode of the feedback text, jitted prefill_fn/decode_fn")
    state = trainer.init_state(jax.random.PRNGKey(c.seed))
    results = []

    if args.quick or not args.no_random:
        ig, hl, tm = measure(trainer, state, "random model", repeats if args.quick else 1,
                             host_update=not args.quick)
        sp = print_table(f"random (untrained) scratch model, {rc.num_episodes} episodes, load {_load()}", ig, hl, tm)
        results.append(("random", sp))

    if not args.quick:
        c.warmstart.enabled = True
        c.warmstart.steps = args.warmstart_steps
        c.warmstart.num_levels = args.warmstart_levels
        c.warmstart.batch_size = args.warmstart_batch
        t0 = time.perf_counter()
        state, wm = trainer.warmstart(state)
        print(f"\n# warm start: {args.warmstart_steps} steps x {args.warmstart_batch} demos from {args.warmstart_levels} levels in "
              f"{time.perf_counter() - t0:.0f}s (token accuracy {wm.get('warmstart/token_accuracy', float('nan')):.3f})")
        ig, hl, tm = measure(trainer, state, "warm-started", repeats)
        fused = fused_iteration_seconds(trainer, state, 1) if args.fused else None
        sp = print_table(f"warm-started scratch model ({args.warmstart_steps} steps), {rc.num_episodes} episodes, "
                         f"load {_load()}", ig, hl, tm, fused)
        results.append(("warm-started", sp))

    if args.smollm2:
        c2 = make_config(args, smollm2=True)
        tr2 = Trainer(c2)
        rc2 = tr2.rollout_cfg
        print(f"\n# SmolLM2-135M: {rc2.num_episodes} episodes, turn cap {rc2.max_turns}, {rc2.max_turn_tokens} "
              f"tokens/turn, context {rc2.context_len}, prompt <= {tr2.conv.max_prompt_len} tokens; "
              f"PPO {c2.ppo.epochs}x{c2.ppo.minibatches}")
        st2 = tr2.init_state(jax.random.PRNGKey(0))
        ig, hl, tm = measure(tr2, st2, "SmolLM2-135M", 1)
        sp = print_table(f"SmolLM2-135M-Instruct (no warm start), {rc2.num_episodes} episodes, load {_load()}",
                         ig, hl, tm)
        results.append(("smollm2", sp))

    print(f"\n# rollout speed-ups (host loop seconds / in-graph seconds): "
          + ", ".join(f"{n} {s:.2f}x" for n, s in results))
    print(f"# total wall time {time.perf_counter() - t_start:.0f}s; load average at end: {_load()}")


if __name__ == "__main__":
    main()
