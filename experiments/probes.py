"""Learnability probes behind the warm-start design (docs/EXPERIMENTS.md: "What it takes for a model from scratch").

    python experiments/probes.py init [--steps 800]          # the "token after P" task, three inits
    python experiments/probes.py first-move --env Maze-5x5 [--steps 800] [--batch 64]
    python experiments/probes.py ceiling --experiment maze5 [--suite full]
    python experiments/probes.py plateau --experiment maze5 --steps 300 --lr 1e-3 [--state-loss 0.5] [--seed 1]
    python experiments/probes.py critic --warmstart W [--iterations 20] [--critics shared,head,separate]
    python experiments/probes.py levels (--warmstart W | --run DIR [--step N]) [--eval-levels 256] [--cap N]
    python experiments/probes.py caps --run DIR[,DIR...] [--caps 1,2,3] [--env Taxi-7x7]

`init`: 42 random tokens from {10..13} with one P (=20) at a random position; the label is the
token right after P. Trained by Adam(1e-3), batch 32, on the scratch model's shape (4 layers,
hidden 128). Compares our model with its current init (transformers' Llama init, normal(0.02)),
our model with the residual projections (wo, w_down) scaled by 1/sqrt(2L) (the GPT-2 style init
used before), and transformers' LlamaForCausalLM (if torch is installed).

`first-move`: one-turn examples (minimal system prompt + a state -> `<answer>` + the first optimal
move) for every state along the oracle's paths of `--levels` levels; held-out accuracy of the move
on 200 other levels, every 100 steps. Chance is about 25-35% (some moves are forced).

`ceiling`: the optimal plan lengths of an experiment's held-out evaluation levels (the very levels
every run is evaluated on) and the share of them a policy that writes one action per turn can solve
at each turn cap: a level needs at least N_opt such turns.

`plateau`: the experiment's warm start (its demos and recipe) cut to its first curriculum phase
(one-action play only) for `--steps` steps; prints the answer loss every 50 steps. About 0.277 is
chance on the action (5 answer tokens, 4 moves): a model still at it has not learnt to read the grid.

`critic`: what a critic's own loss does, for each `model.critic`. From the warm start W (`python -m
wmact_jax.warmstart --config=configs/default.py --out=W`), runs configs/default.py's PPO iterations with
the policy loss switched off, so only the value loss trains: the policy's success should stay where it
is (a critic must not move the policy) and the explained variance should rise (the critic learns).

`levels`: greedy and sampled success per distinct held-out level of configs/default.py (Maze-5x5 has
48 distinct levels), grouped by optimal plan length, for the warm start W or the latest checkpoint of a
run directory (`--run`, evaluated with that run's config); prints the failing levels' grids and one
greedy transcript of each. The turn cap: `--cap N`, or by default the run's own cap at that checkpoint
(an annealed run's final cap; the static bound for a warm start).

`caps`: the latest policy of each run directory, greedy on its held-out levels under each turn cap
of `--caps`: success, mean turns, the actions of the first answer and the share solved in the first
turn. It shows whether a policy's first answer depends on its budget (with `rollout.turns_left`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

SHAPE = dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2)


def _after_p_data(n: int = 4096, t: int = 42, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(10, 14, (n, t))
    pos = rng.integers(2, 30, n)
    x[np.arange(n), pos] = 20
    x[:, -2] = 5
    x[:, -1] = x[np.arange(n), pos + 1]
    return x


def probe_init(steps: int) -> None:
    from wmact_jax.models import ModelConfig, Transformer
    from wmact_jax.models.llama import apply

    data = _after_p_data()
    mc = ModelConfig(vocab_size=64, tie_word_embeddings=True, max_position_embeddings=256, **SHAPE)

    def run_ours(scale_residual: bool):
        gd, p = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
        if scale_residual:
            f = 1.0 / math.sqrt(2 * mc.num_layers)
            for name in ("wo", "w_down"):
                v = p["layers"][name]
                v.set_value(v.get_value() * f)
        opt = optax.adam(1e-3)
        s = opt.init(p)

        def loss(p, x):
            lg = apply(gd, p, x).logits[:, -2]
            return -jnp.mean(jax.nn.log_softmax(lg)[jnp.arange(x.shape[0]), x[:, -1]])

        @jax.jit
        def step(p, s, x):
            l, g = jax.value_and_grad(loss)(p, x)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, l

        rng = np.random.default_rng(1)
        out = []
        for i in range(steps):
            p, s, l = step(p, s, jnp.asarray(data[rng.choice(len(data), 32, replace=False)], jnp.int32))
            out.append(float(l))
        return out

    def run_torch():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                         max_position_embeddings=256))
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        x_all = torch.tensor(data)
        rng = np.random.default_rng(1)
        out = []
        for i in range(steps):
            x = x_all[rng.choice(len(data), 32, replace=False)]
            loss = torch.nn.functional.cross_entropy(m(x).logits[:, -2], x[:, -1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    print(f"# 'token after P' probe: loss (chance = ln 4 = 1.386), mean of each 100 steps; jax {jax.__version__}")
    marks = list(range(100, steps + 1, 100))
    print(f"{'model':<32}" + "".join(f"{m:>8}" for m in marks) + f"{'seconds':>9}", flush=True)
    runners = {"ours, transformers' init": lambda: run_ours(False),
               "ours, residual / sqrt(2L)": lambda: run_ours(True),
               "transformers LlamaForCausalLM": run_torch}
    for name, fn in runners.items():
        t0 = time.time()
        try:
            losses = fn()
        except ImportError:  # torch is a test-time extra
            print(f"{name:<32} (not installed)")
            continue
        print(f"{name:<32}" + "".join(f"{np.mean(losses[m - 100:m]):>8.3f}" for m in marks)
              + f"{time.time() - t0:>9.0f}", flush=True)


def probe_first_move(env_name: str, steps: int, batch: int, lr: float, levels: int, init: str = "",
                     sets: dict | None = None) -> None:
    from configs import default
    from envs_jax.oracles import optimal_actions
    from experiments.run import apply
    from wmact_jax import config_check, prompts
    from wmact_jax import ppo as ppo_lib
    from wmact_jax.models.llama import apply as model_apply
    from wmact_jax.train import Trainer
    from wmact_jax.warmstart import initial_params

    c = default.get_config()
    c.env.name, c.warmstart.init = env_name, init
    apply(c, sets or {})  # e.g. a larger model: --set model.hidden_size=256
    c = config_check.prepare_config(c, explicit=("env.name",) + (("warmstart.init",) if init else ())
                                    + tuple(sets or ()))
    tr = Trainer(c)
    env, ep, tok, conv = tr.env, tr.env_params, tr.tokenizer, tr.conv
    render = jax.jit(env.render_glyphs)
    step_env = jax.jit(lambda k, s, a: env.step_env(k, s, a, ep))
    move_ids = [tok.convert_tokens_to_ids(a) for a in env.action_names]

    def examples(n, seed):
        keys = jax.random.split(jax.random.PRNGKey(seed), n)
        _, st = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None)))(keys, ep)
        st = jax.device_get(st)
        xs, ms = [], []
        for i in range(n):
            s = jax.tree.map(lambda x: x[i], st)
            for a in optimal_actions(env, s, ep) or []:
                answer = tok.encode(prompts.answer_text([env.action_names[a]]), add_special_tokens=False)
                ids, m = conv.host_tokens([np.asarray(render(s))], [answer], [0.0], [True])
                xs.append(ids)
                ms.append(m)
                _, s, *_ = step_env(jax.random.PRNGKey(0), s, jnp.int32(a))
        return xs, ms

    t0 = time.time()
    xtr, mtr = examples(levels, 1)
    xte, mte = examples(200, 99)
    width = -(-max(map(len, xtr + xte)) // 16) * 16
    pad = lambda rows: jnp.asarray([r + [0] * (width - len(r)) for r in rows], jnp.int32)
    xtr, mtr, xte, mte = pad(xtr), pad(mtr).astype(bool), pad(xte), pad(mte).astype(bool)
    move_pos = jnp.argmax(mte, axis=1) + 3  # <think> </think> <answer> MOVE
    # The fresh model (seed 0), or another puzzle's warm start: does what it learnt of the grid carry over?
    p = initial_params(tr)["policy"]
    print(f"# first-move probe on {env_name}: {xtr.shape[0]} training / {xte.shape[0]} held-out examples of "
          f"{width} tokens ({time.time() - t0:.0f} s); batch {batch}, lr {lr}, model "
          f"{ {k: int(c.model[k]) for k in SHAPE} } ({sum(x.size for x in jax.tree.leaves(p)) / 1e6:.2f}M parameters)"
          + (f", from the policy of {init}" if init else ", from scratch"))
    gd = tr.graphdef
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, 50, steps, lr * 0.1)))
    s = opt.init(p)

    def loss_fn(p, tk, m):
        lp, _, _ = ppo_lib.token_logprobs_and_values(model_apply(gd, p, tk).logits, jnp.zeros(tk.shape), tk)
        return -jnp.sum(lp * m) / jnp.sum(m)

    @jax.jit
    def train(p, s, key):
        def one(carry, k):
            p, s = carry
            idx = jax.random.choice(k, xtr.shape[0], (batch,), replace=False)
            l, g = jax.value_and_grad(loss_fn)(p, xtr[idx], mtr[idx])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), l

        (p, s), l = jax.lax.scan(one, (p, s), jax.random.split(key, 25))
        return p, s, l.mean()

    @jax.jit
    def accuracy(p):
        logits = model_apply(gd, p, xte).logits
        at = jnp.take_along_axis(logits, (move_pos - 1)[:, None, None], axis=1)[:, 0]
        pred = jnp.asarray(move_ids)[jnp.argmax(at[:, jnp.asarray(move_ids)], -1)]
        return jnp.mean(pred == jnp.take_along_axis(xte, move_pos[:, None], axis=1)[:, 0])

    key, t0 = jax.random.PRNGKey(0), time.time()
    for i in range(0, steps, 25):
        key, k = jax.random.split(key)
        p, s, l = train(p, s, k)
        if (i + 25) % 100 == 0:
            print(f"step {i + 25}: loss {float(l):.3f}, held-out first-move accuracy {float(accuracy(p)):.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)


def probe_ceiling(experiment: str, suite: str) -> None:
    from envs_jax.oracles import optimal_length
    from experiments.run import experiment_config
    from wmact_jax import config_check
    from wmact_jax.train import Trainer

    c = config_check.prepare_config(experiment_config(experiment, suite, {}, method="interactive", seed=0))
    tr = Trainer(c)
    rollout = tr.eval_rollout
    states = jax.device_get(rollout.reset_levels(jax.random.split(tr.eval_key())[0]))
    n = rollout.cfg.num_episodes
    lens = np.array([optimal_length(tr.env, jax.tree.map(lambda x: x[i], states), tr.env_params) or -1
                     for i in range(n)])
    print(f"# {experiment} ({c.env.name}), suite {suite}: {n} held-out evaluation levels")
    print("optimal plan lengths: " + ", ".join(f"{k}: {int(np.sum(lens == k))}" for k in sorted(set(lens.tolist()))))
    for cap in range(1, tr.max_turns + 1):
        print(f"turn cap {cap}: {np.mean((lens > 0) & (lens <= cap)) * 100:.1f}% solvable with one action per turn")


def probe_plateau(experiment: str, suite: str, steps: int, lr: float, state_loss: float, seed: int,
                  init: str = "") -> None:
    from experiments.run import warmstart_config
    from wmact_jax import config_check
    from wmact_jax.train import Trainer
    from wmact_jax.warmstart import initial_params, run_warmstart

    c = warmstart_config(experiment, suite, {}, seed=seed)
    c.warmstart.steps, c.warmstart.curriculum = steps, 0.99  # phase 1 only (the last 1%: the mix)
    c.warmstart.lr, c.warmstart.state_loss, c.warmstart.init = lr, state_loss, init or ""
    tr = Trainer(config_check.prepare_config(c))
    print(f"# {experiment} ({c.env.name}) warm start, one-action phase: {steps} steps, lr {lr}, "
          f"state_loss {state_loss}, seed {seed}, batch {c.warmstart.batch_size}"
          + (f", from the policy of {init}" if init else ""))
    t0 = time.perf_counter()
    # The fresh model seeded by `seed` (warmstart_config's run seed), or the policy of `init`.
    run_warmstart(tr, initial_params(tr),
                  log=lambda m: print(m, flush=True) if m.startswith("warm start step") else None)
    print(f"# {time.perf_counter() - t0:.0f} s")


def _default_trainer(warmstart: str, **sets):
    """configs/default.py's Trainer (method interactive, fields `sets` such as {'model.critic': 'head'})
    and its state after the saved warm start."""
    from configs import default
    from wmact_jax import config_check
    from wmact_jax.train import Trainer

    c = default.get_config()
    c.method, c.warmstart.path = "interactive", warmstart
    for path, value in sets.items():
        config_check.set_field(c, path, value)
    tr = Trainer(config_check.prepare_config(c))
    state, _ = tr.warmstart(tr.init_state(jax.random.key(c.seed)))
    return tr, state


def probe_critic(warmstart: str, iterations: int, critics: list[str]) -> None:
    from wmact_jax import ppo

    policy_loss = ppo.policy_loss_per_token
    # The value loss alone: the policy's surrogate is zeroed (make_update reads this module function).
    ppo.policy_loss_per_token = lambda *a: (0.0 * policy_loss(*a)[0], jnp.zeros_like(a[0]))
    try:
        print(f"# critic probe: configs/default.py from the warm start {warmstart}, {iterations} iterations of PPO "
              "with the policy loss off (only the value loss trains)")
        for critic in critics:
            tr, state = _default_trainer(warmstart, **{"model.critic": critic})
            print(f"## model.critic={critic} (ppo.lr {tr.config.ppo.lr}, ppo.critic_lr {tr.config.ppo.critic_lr}, "
                  f"vf_coef {tr.config.ppo.vf_coef})")
            print("iteration | training success | value loss | explained variance | approx KL to the last policy")
            for i in range(1, iterations + 1):
                state, m = tr.iteration(state)
                m = jax.device_get(m)
                print(f"{i:9d} | {m['success_rate']:16.3f} | {m['ppo/value_loss']:10.4f} | "
                      f"{m['ppo/explained_variance']:18.3f} | {m['ppo/approx_kl']:.5f}", flush=True)
            ev = tr.evaluate(state, greedy=False)[0]
            print(f"after {iterations}: sampled success on {tr.config.train.eval_levels} held-out levels "
                  f"{ev['success_rate'] * 100:.1f}%")
    finally:
        ppo.policy_loss_per_token = policy_loss


def _run_trainer(run: str, eval_levels: int | None = None, step: int | None = None):
    """(Trainer with the run's own config, its state at checkpoint `step` (default: the latest; 0 is the
    policy before RL, the warm start), a description)."""
    from experiments.reevaluate import restore_run

    tr, state, step, _ = restore_run(run, eval_levels, step)
    return tr, state, f"{run}, iteration {step}"


def probe_caps(runs: list[str], caps: list[int], env_name: str | None = None) -> None:
    """Greedy play of each run's latest policy under several turn caps: whether its first answer
    depends on the budget. Without `rollout.turns_left` the prompt is the same under every cap, so
    the first answers are too; with it, a policy that reads the count may plan more when it has less.
    env_name: play another environment with the same actions instead (transfer, e.g. Taxi-7x7), on
    the run's held-out level count."""
    print("run | env | turns_left | cap | success (%) | mean turns | first-turn actions | solved in the first turn (%)")
    for run in runs:
        tr, state, where = _run_trainer(run)
        env = env_name or tr.config.env.name
        for cap in caps:
            if not 1 <= cap <= tr.max_turns:
                raise SystemExit(f"--caps: {cap} is outside 1..{tr.max_turns} (the run's static turn bound)")
            b = jax.device_get(tr.eval_batch(state.ppo.params, cap, 0.0, env))
            first = np.asarray(b.turn_actions[:, 0], float)
            solved_first = np.asarray(b.success & (b.turns == 1), float)
            print(f"{where} | {env} | {bool(tr.config.rollout.turns_left)} | {cap} | {100 * b.success.mean():.1f} | "
                  f"{b.turns.mean():.2f} | {first.mean():.2f} | {100 * solved_first.mean():.1f}", flush=True)


def loops(transcript: str) -> tuple[bool, bool]:
    """-> (stuck, revisits) of an episode's transcript. stuck: it repeats an answer from the state that
    answer left unchanged (a turn whose feedback shows the state it started from, then the same answer
    again: greedy decoding loops there until the turn cap, the context differing only by the turns-left
    count). revisits: a state shown twice (a cycle of any length)."""
    states = [part.split("<|im_end|>")[0] for part in transcript.split("Current state:\n")[1:]]
    answers = [part.split("</answer>")[0] for part in transcript.split("<answer>")[1:]]
    stuck = any(states[t] == states[t + 1] and answers[t] == answers[t + 1]
                for t in range(min(len(states), len(answers)) - 1))
    return stuck, len(set(states)) < len(states)


def levels_cap(requested: int | None, current: int, bound: int) -> int:
    """The turn cap `levels` plays at: `requested` (1..bound), else the policy's own `current` cap."""
    if requested is None:
        return min(current, bound)
    if not 1 <= requested <= bound:
        raise SystemExit(f"--cap: {requested} is outside 1..{bound} (the run's static turn bound)")
    return requested


def probe_levels(warmstart: str, run: str | None, eval_levels: int, cap: int | None = None,
                 step: int | None = None) -> None:
    import collections
    import json

    from envs_jax.oracles import optimal_length

    if run:  # the run's own config and its latest checkpoint
        tr, state, where = _run_trainer(run, eval_levels, step)
        current = tr.turn_cap(state)
    else:
        tr, state = _default_trainer(warmstart, **{"train.eval_levels": eval_levels})
        where = f"warm start {warmstart}"
        current = tr.max_turns
    key = tr.eval_key()
    rollout = tr.eval_rollout
    states = jax.device_get(rollout.reset_levels(jax.random.split(key)[0]))
    cap = jnp.int32(levels_cap(cap, current, tr.max_turns))
    greedy = tr.eval_batch(state.ppo.params, cap, 0.0)
    sampled = tr.eval_batch(state.ppo.params, cap, tr.config.rollout.temperature)
    levels = collections.OrderedDict()  # grid text -> [episodes, greedy solved, sampled solved, N_opt, transcript]
    # Every failure's transcript (decoded once): how it loops, and the first greedy one of each level.
    texts = {name: {i: tr.transcript(b, i) for i in range(rollout.cfg.num_episodes) if not b.success[i]}
             for name, b in (("greedy", greedy), ("sampled", sampled))}
    # How failures loop: an answer repeated from the state it left unchanged; a state seen twice.
    failed = {name: np.array([loops(t) for t in ts.values()], bool).reshape(-1, 2) for name, ts in texts.items()}
    for i in range(rollout.cfg.num_episodes):
        s = jax.tree.map(lambda x: x[i], states)
        e = levels.setdefault(tr.env.render_text(s), [0, 0, 0, None, ""])
        e[0] += 1
        e[1] += int(greedy.success[i])
        e[2] += int(sampled.success[i])
        if e[3] is None:
            e[3] = optimal_length(tr.env, s, tr.env_params)
        if not greedy.success[i] and not e[4]:
            e[4] = texts["greedy"][i]
    print(f"# {tr.config.env.name}: {rollout.cfg.num_episodes} held-out episodes, {len(levels)} distinct levels; "
          f"policy: {where}; turn cap {int(cap)}")
    by_len = collections.defaultdict(lambda: np.zeros(4, int))
    for grid, (n, g, smp, opt, text) in sorted(levels.items(), key=lambda kv: kv[1][3] or 0):
        by_len[opt] += (1, n, g, smp)
        if g < n:
            print(f"\n## greedy {g}/{n}, sampled {smp}/{n}, optimal plan {opt} moves\n{grid}\n{text}")
    print("\noptimal plan | levels | episodes | greedy success | sampled success")
    for opt, (d, n, g, smp) in sorted(by_len.items()):
        print(f"{opt:12} | {d:6d} | {n:8d} | {g / n * 100:13.1f}% | {smp / n * 100:14.1f}%")
    d, n, g, smp = sum(by_len.values())
    half = lambda k: 196 * np.sqrt(k / n * (1 - k / n) / n)  # noqa: E731  (95% normal interval, in %)
    print(f"{'all':>12} | {d:6d} | {n:8d} | {g / n * 100:5.1f} ± {half(g):4.1f}% | "
          f"{smp / n * 100:6.1f} ± {half(smp):4.1f}%")
    for name, f in failed.items():
        print(f"{name} failures: {len(f)}; repeating an answer from the state it left unchanged: {f[:, 0].sum()}; "
              f"showing a state twice: {f[:, 1].sum()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=("init", "first-move", "ceiling", "plateau", "critic", "levels", "caps"))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--env", help="first-move: the puzzle (default Maze-5x5); caps: play this environment "
                    "instead of the run's own (transfer)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--levels", type=int, default=3000)
    ap.add_argument("--experiment", default="maze5")
    ap.add_argument("--suite", default="full")
    ap.add_argument("--state-loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="", help="first-move, plateau: start from the policy of this saved warm "
                    "start (another puzzle's, e.g.) instead of a fresh model")
    ap.add_argument("--warmstart", help="a saved warm start of configs/default.py (critic, levels)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--critics", default="shared,head,separate")
    ap.add_argument("--run", help="a run directory: its latest checkpoint (levels; caps: comma-separated runs)")
    ap.add_argument("--caps", default="1,2,3", help="turn caps to evaluate at (caps)")
    ap.add_argument("--eval-levels", type=int, default=256)
    ap.add_argument("--cap", type=int, help="levels: the turn cap (default: the run's own cap at its latest "
                    "checkpoint; a warm start's static bound)")
    ap.add_argument("--step", type=int, help="levels: the run's checkpoint at this iteration instead of its "
                    "latest (0: its warm start, before RL)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="first-move: a config field of configs/default.py, e.g. model.hidden_size=256 (repeatable)")
    a = ap.parse_args()
    if (a.probe == "critic" or a.probe == "levels" and not a.run) and not a.warmstart:
        ap.error(f"{a.probe} needs --warmstart (python -m wmact_jax.warmstart --config=configs/default.py --out=W)")
    if a.probe == "init":
        probe_init(a.steps)
    elif a.probe == "ceiling":
        probe_ceiling(a.experiment, a.suite)
    elif a.probe == "plateau":
        probe_plateau(a.experiment, a.suite, a.steps, a.lr, a.state_loss, a.seed, a.init)
    elif a.probe == "critic":
        probe_critic(a.warmstart, a.iterations, a.critics.split(","))
    elif a.probe == "levels":
        probe_levels(a.warmstart, a.run, a.eval_levels, a.cap, a.step)
    elif a.probe == "caps":
        if not a.run:
            ap.error("caps needs --run DIR[,DIR...]")
        probe_caps(a.run.split(","), [int(x) for x in a.caps.split(",")], a.env)
    else:
        from experiments.run import parse_sets

        probe_first_move(a.env or "Maze-5x5", a.steps, a.batch, a.lr, a.levels, a.init, parse_sets(a.set))


if __name__ == "__main__":
    main()
