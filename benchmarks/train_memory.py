"""Memory and time of one training step (forward + backward + AdamW) of the scratch model without
remat, with `model.remat` (each decoder layer rematerialised in the backward pass: "on"), with
`model.remat_attention` too ("on+a") and with `model.flash_attention` instead ("on+f"), at the shapes the
Taxi suite trains at: the warm start's batches of 32 demos at each length-bucket width, and a PPO
minibatch (16 episodes of the full 1664-token context).

    python benchmarks/train_memory.py            # widths 128 ... 1344, the PPO shape, a Taxi iteration, SmolLM2
    python benchmarks/train_memory.py --iterations 0   # without the Taxi iterations
    python benchmarks/train_memory.py --quick    # widths 256 and 1344 only
    python benchmarks/train_memory.py --smollm2  # only SmolLM2-135M's plan at its presets' shapes (compile only)

Each shape runs in a child process of its own, so its peak RSS is its own. Figures per shape:
- XLA temp: the compiled step's scratch buffers (`compiled.memory_analysis().temp_size_in_bytes`),
  which is where the saved activations live; arguments (params, optimizer state, batch) come on top.
  This is what XLA plans for; on an accelerator it is the number that has to fit in device memory.
- peak RSS: the child's resident peak (jax, the compiler and the program included).
- s/step: the mean over `--reps` steps after a warm-up (the step is the warm start's: the loss of
  `warmstart.demo_loss_fn` on random tokens with a third of them marked as answers).
The PPO update differs from this step by elementwise terms over the same logits (ratios, clipping,
values) and, with a separate critic, a second model's forward and backward. So the last part times the
real thing: whole Taxi WMAct iterations (`trainer.iteration`: 32 episodes rolled out, then the update,
at the width buckets of those episodes) from the kept warm start, with their program's XLA temp.
And SmolLM2-135M (configs/*_smollm2.py, meant for accelerators): its loss and gradient compiled, not run,
at the presets' shapes (a PPO minibatch there is 32 episodes of up to 4096 tokens), with and without
remat, `model.logits_chunk` (the logits a chunk of positions at a time) and `model.mlp_chunk` (each
layer's MLP a chunk of token positions at a time): what XLA plans.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The Taxi suite's model (configs/base.py) and the scratch tokenizer's vocabulary on Taxi.
MODEL = dict(vocab_size=1376, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2)
LEVELS = {0: "off", 1: "on", 2: "on+a", 3: "on+f"}
WARM_ROWS, WIDTHS = 32, (128, 256, 512, 1024, 1344)  # warmstart.batch_size; the Taxi buckets' range
PPO_ROWS, PPO_WIDTH = 16, 1664  # 8 levels x 4 rollouts / 2 minibatches; rollout.context_len


def child(rows: int, width: int, remat: int, reps: int) -> dict:
    """remat: 0 off, 1 model.remat, 2 model.remat + model.remat_attention, 3 model.remat + model.flash_attention."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from wmact_jax.models import ModelConfig, Transformer
    from wmact_jax.warmstart import ANSWER, demo_loss_fn

    mc = ModelConfig(**MODEL, tie_word_embeddings=True, max_position_embeddings=2048, value_head=True)
    graphdef, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = opt.init(params)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, MODEL["vocab_size"], (rows, width)), jnp.int32)
    marks = jnp.asarray(np.where(rng.random((rows, width)) < 1 / 3, ANSWER, 0), jnp.int8)
    loss_fn = demo_loss_fn(graphdef, 0.0, forward_options(remat, 0))

    def step(p, s, tk, mk):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tk, mk)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, opt_state, tokens, marks).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    p, s, loss = compiled(params, opt_state, tokens, marks)  # warm-up
    loss.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        p, s, loss = compiled(p, s, tokens, marks)
    loss.block_until_ready()
    return dict(rows=rows, width=width, remat=remat, temp_mb=mem.temp_size_in_bytes / 2**20,
                args_mb=mem.argument_size_in_bytes / 2**20, compile_s=compile_s,
                step_s=(time.perf_counter() - t0) / reps, loss=float(loss),
                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def forward_options(remat: int, logits_chunk: int, mlp_chunk: int = 0):
    """The `ForwardOptions` of a remat level (0 off, 1 model.remat, 2 + model.remat_attention, 3 +
    model.flash_attention), as `Trainer.forward_options` builds them from model.*."""
    from wmact_jax.models import ForwardOptions

    return ForwardOptions(remat=remat > 0, logits_chunk=logits_chunk, remat_attention=remat == 2,
                          flash_attention=remat == 3, mlp_chunk=mlp_chunk)


# SmolLM2-135M-Instruct's shape (its config.json), bfloat16 compute as configs/_smollm2.py; random weights.
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
               rope_theta=100000.0, dtype="bfloat16")
# (rows, width, remat (0 off, 1 model.remat, 2 + model.remat_attention, 3 + model.flash_attention), logits_chunk
#  [, model.mlp_chunk])
SMOLLM2_SHAPES = ((8, 1024, 0, 0), (8, 1024, 1, 0), (8, 1024, 1, 256), (8, 1024, 2, 256), (8, 4096, 1, 0),
                  (8, 4096, 1, 256), (8, 4096, 2, 256), (32, 4096, 0, 0), (32, 4096, 1, 0), (32, 4096, 1, 256),
                  (32, 4096, 1, 64), (32, 4096, 2, 256), (8, 1024, 3, 256), (8, 4096, 3, 256), (32, 4096, 3, 256),
                  (32, 4096, 3, 256, 8192), (32, 4096, 3, 256, 2048))


# Forward only (the KL reference's log-probs, ppo.recompute_old's, the separate critic's values): the whole
# batch at once, as before 2026-12-06, against a minibatch (what Trainer._by_minibatch now runs at a time).
# remat = -1 marks them with the plain attention, -2 with model.flash_attention (which
# Trainer.forward_options(grad=False) passes on since 2026-12-06).
SMOLLM2_FORWARDS = ((256, 4096, -1, 256), (32, 4096, -1, 256), (256, 4096, -2, 256), (32, 4096, -2, 256))
FORWARD_MODES = {-1: "fwd", -2: "fwd+f"}


def child_smollm2(rows: int, width: int, remat: int, chunk: int, mlp_chunk: int = 0) -> dict:
    """Compile only (abstract weights, nothing allocated): what XLA plans for SmolLM2's step at this shape
    (remat -1: the forward's token log-probs only, no gradient)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wmact_jax.models import ModelConfig, Transformer
    from wmact_jax.warmstart import demo_loss_fn

    mc = ModelConfig(**SMOLLM2, tie_word_embeddings=True, max_position_embeddings=8192)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(mc, rngs=nnx.Rngs(0))))
    loss_fn = demo_loss_fn(graphdef, 0.0, forward_options(remat, chunk, mlp_chunk))
    tokens = jax.ShapeDtypeStruct((rows, width), jnp.int32)
    marks = jax.ShapeDtypeStruct((rows, width), jnp.int8)
    t0 = time.perf_counter()
    if remat < 0:
        from wmact_jax import ppo
        from wmact_jax.models import ForwardOptions
        from wmact_jax.models.llama import apply

        fn = jax.jit(lambda p, tk, mk: ppo.token_logprobs_and_values(
            apply(graphdef, p, tk, options=ForwardOptions(logits_chunk=chunk, flash_attention=remat == -2)).logits,
            jnp.zeros(tk.shape), tk)[0])  # Trainer.forward_options(grad=False)
    else:
        fn = jax.jit(jax.grad(lambda p, tk, mk: loss_fn(p, tk, mk)[0]))
    mem = fn.lower(params, tokens, marks).compile().memory_analysis()
    return dict(rows=rows, width=width, remat=remat, chunk=chunk, mlp_chunk=mlp_chunk, temp_gb=mem.temp_size_in_bytes / 2**30,
                args_gb=mem.argument_size_in_bytes / 2**30, compile_s=time.perf_counter() - t0)


def smollm2_table() -> None:
    print(f"# SmolLM2-135M shape {SMOLLM2}, loss + gradient compiled only (no optimizer; weights abstract); "
          "XLA:CPU's plan, an accelerator's differs in detail; remat 'fwd' = a forward's token log-probs only, 'fwd+f' with flash_attention")
    print(f"{'rows':>4} {'width':>5} {'remat':>5} {'logits_chunk':>12} {'mlp_chunk':>9} | {'XLA temp GB':>11} "
          f"{'args GB':>7} {'compile s':>9}")
    for rows, width, remat, chunk, mlp in ((*s, 0)[:5] for s in SMOLLM2_SHAPES + SMOLLM2_FORWARDS):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--smollm2-child", str(rows), str(width),
                              str(remat), str(chunk), str(mlp)], capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not line:
            raise SystemExit(f"SmolLM2 child {rows}x{width} remat={remat} failed:\n{out.stderr[-2000:]}")
        r = json.loads(line[0][7:])
        mode = {**FORWARD_MODES, **LEVELS}[remat]
        print(f"{rows:>4} {width:>5} {mode:>5} {chunk or '-':>12} {mlp or '-':>9} | {r['temp_gb']:>11.1f} "
              f"{r['args_gb']:>7.2f} {r['compile_s']:>9.1f}", flush=True)


def taxi_trainer(level: int):
    """The Taxi suite's WMAct trainer at a remat level (LEVELS), from the kept 95.8% warm start
    (`experiments/results/taxi_suite_rerun/stage4_warmstart`) -> (trainer, its state)."""
    import jax

    from experiments.run import experiment_config
    from wmact_jax.config_check import prepare_config
    from wmact_jax.train import Trainer

    c = experiment_config("taxi", "taxi", {}, method="wmact")
    opts = forward_options(level, 0)  # the level's options, set where Trainer.forward_options reads them
    for name in ("remat", "remat_attention", "flash_attention"):
        c.model[name] = getattr(opts, name)
    c.warmstart.enabled = False
    c.warmstart.path = os.path.join(ROOT, "experiments/results/taxi_suite_rerun/stage4_warmstart")
    trainer = Trainer(prepare_config(c, explicit=()), "")
    state, _ = trainer.warmstart(trainer.init_state(jax.random.PRNGKey(0)))
    return trainer, state


def update_program(trainer, state):
    """The PPO update alone (rewards, then epochs x minibatches, as in the iteration) on one rollout's
    batch -> (jitted update(ppo_state, ref_params, batch, key) -> metrics, its arguments but the key)."""
    import jax

    batch = jax.jit(lambda p, k, cap: trainer.rollout.run(p, k, cap, trainer.sampling)[0])(
        state.ppo.params, jax.random.PRNGKey(1), trainer.turn_cap(state))

    def update(ppo_state, ref, b, key):
        data, _ = trainer._ppo_batch(ppo_state.params, ref, b, trainer.switches)
        return trainer._update(ppo_state, data, key)[1]

    return jax.jit(update), (state.ppo, state.ref_params, batch)


def child_iteration(level: int, iters: int) -> dict:
    """A whole Taxi WMAct iteration (rollout + PPO update, `trainer.iteration`) from the kept 95.8% warm
    start: the real update, at the width buckets of real episodes."""
    import jax

    trainer, state = taxi_trainer(level)
    c = trainer.config
    t0 = time.perf_counter()
    switches = trainer.device_switches()
    compiled = trainer._iteration_jit.lower(trainer._committed(state), switches).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    # The compiled program itself runs the iterations (what trainer.iteration would call: compiled once).
    state, m = compiled(trainer._committed(state), switches)  # warm-up
    jax.block_until_ready(m)
    secs, success = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, m = compiled(state, switches)
        jax.block_until_ready(m)
        secs.append(time.perf_counter() - t0)
        success.append(float(m["success_rate"]))
    # The PPO update alone on one rollout's batch, timed `iters` times: the part of an iteration the levers act on.
    update, args = update_program(trainer, state)
    jax.block_until_ready(update(*args, jax.random.PRNGKey(2)))  # compile + warm-up
    t0 = time.perf_counter()
    for i in range(iters):
        jax.block_until_ready(update(*args, jax.random.PRNGKey(3 + i)))
    return dict(rows=c.rollout.levels_per_iteration * c.rollout.group_size, width=c.rollout.context_len,
                remat=level, temp_mb=mem.temp_size_in_bytes / 2**20, args_mb=mem.argument_size_in_bytes / 2**20,
                compile_s=compile_s, step_s=sum(secs) / iters, loss=sum(success) / iters,  # "loss": the success
                update_s=(time.perf_counter() - t0) / iters,
                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="widths 256 and 1344 only, no PPO shape")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=3,
                    help="timed Taxi iterations per side after a warm-up one (0 = skip that part)")
    ap.add_argument("--smollm2", action="store_true", help="only the SmolLM2-135M shapes (compile only)")
    ap.add_argument("--child", nargs=3, type=int, metavar=("ROWS", "WIDTH", "REMAT"), help=argparse.SUPPRESS)
    ap.add_argument("--smollm2-child", nargs=5, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smollm2_child:
        rows, width, remat, chunk, mlp = args.smollm2_child
        print("RESULT " + json.dumps(child_smollm2(rows, width, remat, chunk, mlp)), flush=True)
        return
    if args.smollm2:
        smollm2_table()
        return
    if args.child:
        rows, width, remat = args.child
        res = child_iteration(remat, args.iterations) if rows == 0 else child(rows, width, remat, args.reps)
        print("RESULT " + json.dumps(res), flush=True)
        return

    import jax

    shapes = [(WARM_ROWS, w) for w in ((256, 1344) if args.quick else WIDTHS)]
    if not args.quick:
        shapes.append((PPO_ROWS, PPO_WIDTH))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"backend {jax.default_backend()}; model {MODEL}, float32; {args.reps} timed steps per shape")
    print(f"{'rows':>4} {'width':>5} {'remat':>5} | {'XLA temp MB':>11} {'args MB':>7} {'peak RSS MB':>11} "
          f"{'compile s':>9} {'s/step':>7} | {'temp saved':>10} {'time cost':>9}")
    def both(rows, width, levels=(0, 1, 2, 3)):  # -> {remat level: result}, printed as they come
        res = {}
        for remat in levels:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--reps", str(args.reps), "--iterations",
                                  str(args.iterations), "--child", str(rows), str(width), str(remat)],
                                 capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode or not line:
                raise SystemExit(f"child {rows}x{width} remat={remat} failed:\n{out.stderr[-2000:]}")
            r = res[remat] = json.loads(line[0][7:])
            ratio = ""
            if remat:
                ratio = (f" | {1 - r['temp_mb'] / res[0]['temp_mb']:>10.0%} "
                         f"{r['step_s'] / res[0]['step_s']:>8.2f}x")
            print(f"{r['rows']:>4} {r['width']:>5} {LEVELS[remat]:>5} | {r['temp_mb']:>11.0f} "
                  f"{r['args_mb']:>7.1f} {r['rss_mb']:>11.0f} {r['compile_s']:>9.1f} {r['step_s']:>7.3f}{ratio}",
                  flush=True)
        return res

    for rows, width in shapes:
        res = both(rows, width)
        for level in (1, 2, 3):
            if abs(res[level]["loss"] - res[0]["loss"]) > 1e-4 * max(1.0, abs(res[0]["loss"])):
                raise SystemExit(f"remat {LEVELS[level]} changed the loss at {rows}x{width}: {res[0]['loss']} vs "
                                 f"{res[level]['loss']}")
    print("# remat: on = model.remat, on+a = model.remat and model.remat_attention, on+f = model.remat and "
          "model.flash_attention; temp saved: 1 - XLA temp / "
          "XLA temp without remat; time cost: s/step / s/step without remat")
    if args.iterations and not args.quick:
        print(f"# a whole Taxi WMAct iteration (rollout of {PPO_ROWS * 2} episodes + PPO update, trainer.iteration) "
              f"from the kept 95.8% warm start; s/step = s/iteration, mean of {args.iterations} after a warm-up")
        res = both(0, 0, levels=(0, 1, 3))
        print("# the PPO update alone (rewards + epochs x minibatches) on one rollout's batch, s per update: "
              + ", ".join(f"{LEVELS[k]} {r['update_s']:.3f}" for k, r in res.items()))
        print(f"# training success over those iterations: {res[0]['loss']:.1%} without remat, {res[1]['loss']:.1%} "
              f"with, {res[3]['loss']:.1%} with flash_attention too (the same keys; the episodes drift apart as the updates differ by float round-off)")
    if not args.quick:
        smollm2_table()


if __name__ == "__main__":
    main()
