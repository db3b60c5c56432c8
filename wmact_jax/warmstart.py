"""Supervised warm start on oracle demonstrations, in the agent's own conversation format.

A model trained from scratch cannot find the answer format, let alone a solution, by sampling.
The warm start plays held-out levels with the oracle and writes each game as the exact token
sequence the in-graph rollout would produce (`Conversation.host_tokens`), then fits the model's
answer tokens by cross-entropy. Demonstrations are deliberately imperfect so that RL has something
to improve: a mix of one-action turns and multi-action plans (`plan_fraction`), and random detour
actions (`noise`) after which the oracle re-plans from the new state. `recover` adds turns whose
move has no effect (into a wall; a box pushed against one) followed by the oracle's move: the
no-effect answer stays in the context but is not trained on, so the demos show how to get out of
the loop every greedy failure of a warm-started policy ends in (the same blocked move, turn after
turn, until the cap).

Training runs in two phases: one-action play first (the model learns to read a grid), then the mix.
What the mix holds sets the policy's style: greedy decoding follows the majority at the decision to
close an answer after its first action, so a mix of mostly one-action answers gives a policy that
never writes two (`mixed_one_action_share`, `plan_actions`).
"""

from __future__ import annotations

import functools
import time
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs_jax.oracles import optimal_actions
from wmact_jax import config_check
from wmact_jax import ppo as ppo_lib
from wmact_jax import prompts


# Loss-mask marks of the demonstrations: ANSWER = the model's answer tokens (Conversation.host_tokens
# marks them 1), FEEDBACK = the environment's feedback after an answer (reward line and next state),
# trained on with weight `warmstart.state_loss`.
ANSWER, FEEDBACK = 1, 2


_DEMO_FNS: Dict[Tuple[int, int], tuple] = {}


def _demo_fns(env, params):
    """(reset of a batch of keys, one step, render) for `env` under `params`, jitted once per pair of
    objects: a warm start writes several demo sets (and a run several warm-start stages) from one
    trainer's environment, and fresh `jax.jit` wrappers would trace and compile all three each time."""
    key = (id(env), id(params))
    if key not in _DEMO_FNS:  # the entry keeps env and params alive, so their ids stay theirs
        _DEMO_FNS[key] = (env, params, jax.jit(jax.vmap(env.reset_env, in_axes=(0, None))),
                          jax.jit(lambda k, s, a: env.step_env(k, s, a, params)), jax.jit(env.render_glyphs))
    return _DEMO_FNS[key][2:]


CHUNKS = config_check.CHOICES["warmstart.chunk"]


def warmstart_seed(config) -> int:
    """The warm start's seed: `warmstart.seed`, or the run's `seed` when it is -1."""
    s = int(config.warmstart.seed)
    return int(config.seed) if s < 0 else s


def initial_params(trainer):
    """The params a warm start trains from: the fresh model's (seeded by `warmstart_seed`), with the
    policy of the saved warm start `warmstart.init` when it is set (extending that warm start)."""
    params = trainer.init_state(jax.random.key(warmstart_seed(trainer.config))).ppo.params
    if trainer.config.warmstart.init:
        params, _ = load_warmstart(trainer.config.warmstart.init, trainer, params)
    return params


def demo_level_keys(seed: int, level_offset: int, num_levels: int) -> jax.Array:
    """Reset keys of the demo levels: a stream disjoint from RL's and from held-out evaluation's;
    `level_offset` separates the demo sets of one warm start (step-style, one-turn, plan-style)."""
    return jax.random.split(jax.random.PRNGKey(7_000_003 + seed + 1_000 * level_offset), num_levels)


def make_demos(trainer, num_levels: int, seed: int, max_turns: int, max_actions_per_turn: int,
               plan_fraction: float, noise: float, conv=None, level_offset: int = 0, chunk: str = "plan",
               keep_unsolved: bool = False, windows: bool = False, recover: float = 0.0,
               plan_actions: int = 0, budget_aware: bool = False
               ) -> Tuple[List[List[int]], List[List[int]], Dict[str, float]]:
    """-> (token lists, loss-mask lists, stats). Levels come from a key stream disjoint from RL's.

    conv: the conversation to write (default the trainer's); max_turns == 1 writes whole plans.
    A demo is either one action per turn or, with probability `plan_fraction`, multi-action turns:
    chunk "plan" gives the whole remaining optimal plan (at most K actions) each turn, so an answer
    ends where the plan ends (a point the model can locate by simulating its own moves); chunk
    "random" gives a uniform 1..K prefix of it, which makes every stop a coin flip and greedy
    decoding run past K ("Left || Left || ..."). keep_unsolved: keep demos whose optimal moves did
    not reach the goal within `max_turns` (one action per turn on a long level), instead of
    dropping them, which biases the single-action style toward short levels. windows: also write
    every later turn of a demo on its own, as the first turn of a game starting from that state: a
    short sequence whose one answer is read off one grid. A model from scratch first has to learn to
    find the player in a grid, and it does so several times faster on short single-grid sequences
    than inside conversations holding several grids (measured on Maze-5x5). recover: the share of
    turns (of multi-turn demos, with a turn left for the correction) preceded by a turn whose one
    move leaves the state unchanged, that answer masked out of the loss (module docstring).
    plan_actions: the most actions a multi-action turn holds (0 = max_actions_per_turn): the demo plays
    a few moves, looks at the result, plays the next few.
    When the conversation states the turns left, each demo shows a cap drawn uniformly between the
    turns it uses and `max_turns` (its own stream: the demos themselves are those of the same seed
    without the count). The play does not depend on it: what to do with a small budget is left to RL.
    budget_aware (with the count): a multi-action demo draws its cap uniformly from 1..max_turns before it
    plays, and on the turn where one turn is left it writes the whole rest of the plan (at most K
    actions, no detour): the demos then show what a small budget asks for.
    """
    if chunk not in CHUNKS:
        raise ValueError(f"chunk must be one of {CHUNKS}, got {chunk!r}")
    env, ep, tok = trainer.env, trainer.env_params, trainer.tokenizer
    conv = trainer.conv if conv is None else conv
    rng = np.random.default_rng(seed)
    keys = demo_level_keys(seed, level_offset, num_levels)
    reset, step, render = _demo_fns(env, ep)
    _, states = reset(keys, ep)
    states = jax.device_get(states)
    key = jax.random.PRNGKey(seed)
    cap_rng = np.random.default_rng([seed, 17])
    out_tok, out_mask = [], []
    stats = {"levels": 0, "kept": 0, "unsolved": 0, "too_long": 0, "turns": 0.0, "actions": 0.0, "windows": 0,
             "recoveries": 0}
    K = max_actions_per_turn
    K_plan = min(K, plan_actions) if plan_actions > 0 else K

    def no_effect_moves(state, grid) -> List[int]:
        """Actions after which the rendered state is unchanged (and the episode goes on)."""
        out = []
        for a in range(env.num_actions):
            _, s2, _, d, _ = step(jax.random.PRNGKey(0), state, jnp.int32(a))
            if not bool(d) and np.array_equal(np.asarray(render(s2)), grid):
                out.append(a)
        return out

    for i in range(num_levels):
        stats["levels"] += 1
        state = jax.tree.map(lambda x: x[i], states)
        plan = optimal_actions(env, state, ep)
        if not plan:
            stats["unsolved"] += 1
            continue
        grids = [np.asarray(render(state))]
        answers, rewards, valid, trained = [], [], [], []
        solved, n_actions = False, 0
        multi = rng.random() < plan_fraction
        # A budget-aware demo's cap is drawn before it plays, and its last turn finishes the plan.
        cap = (int(cap_rng.integers(1, max_turns + 1))
               if budget_aware and multi and conv.show_turns_left and max_turns > 1 else None)
        turn_bound = max_turns if cap is None else cap
        while not solved and len(answers) < turn_bound and plan is not None:
            last = cap is not None and len(answers) + 1 == cap
            stuck = (no_effect_moves(state, grids[-1]) if recover > 0 and len(answers) + 1 < turn_bound
                     and (not trained or trained[-1]) and rng.random() < recover else [])
            detour = bool(stuck) or (rng.random() < noise and not last)
            if stuck:  # a blocked move (not trained on); the state is unchanged, the plan still holds
                moves = [int(rng.choice(stuck))]
                stats["recoveries"] += 1
            elif detour:  # one random move, then the oracle re-plans from where it led
                moves = [int(rng.integers(env.num_actions))]
            elif multi or max_turns == 1:
                if max_turns == 1 or last:
                    k = len(plan)
                else:
                    k = min(len(plan), K_plan) if chunk == "plan" else int(rng.integers(1, K_plan + 1))
                moves = plan[:k]
            else:
                moves = plan[:1]
            moves = moves[:K]
            r_turn, done = 0.0, False
            for a in moves:
                key, sub = jax.random.split(key)
                _, state, r, d, info = step(sub, state, jnp.int32(a))
                r_turn += float(r)
                n_actions += 1
                if bool(d):
                    solved = bool(info.success)
                    done = True
                    break
            answers.append(prompts.answer_text([env.action_names[a] for a in moves]))
            rewards.append(r_turn)
            valid.append(True)
            trained.append(not stuck)
            grids.append(np.asarray(render(state)))
            if done:
                break
            if stuck:  # the blocked move changed nothing: the plan stands
                continue
            plan = plan[len(moves):] if not detour else optimal_actions(env, state, ep)
        if not solved:
            stats["unsolved"] += 1
            if not keep_unsolved:
                continue
        answer_ids = [tok.encode(a, add_special_tokens=False) for a in answers]
        if cap is None and conv.show_turns_left:
            cap = int(cap_rng.integers(len(answers), max(len(answers), max_turns) + 1))
        ids, mask = conv.host_tokens(grids, answer_ids, rewards, valid, feedback_mark=FEEDBACK, trained=trained,
                                     turn_cap=cap)
        if len(ids) > trainer.rollout_cfg.context_len:
            stats["too_long"] += 1
            continue
        out_tok.append(ids)
        out_mask.append(mask)
        for j in range(1, len(answers) if windows else 0):  # turn j alone, as the first turn of a game
            if not trained[j]:
                continue
            w_ids, w_mask = conv.host_tokens([grids[j]], [answer_ids[j]], [rewards[j]], [True],
                                             turn_cap=None if cap is None else cap - j)
            out_tok.append(w_ids)
            out_mask.append(w_mask)
            stats["windows"] += 1
        stats["kept"] += 1
        stats["turns"] += len(answers)
        stats["actions"] += n_actions
    if stats["kept"]:
        stats["turns"] /= stats["kept"]
        stats["actions"] /= stats["kept"]
    return out_tok, out_mask, stats


def _pad(rows: List[List[int]], width: int, value: int = 0) -> np.ndarray:
    arr = np.full((len(rows), width), value, np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return arr


def bucket_arrays(toks: List[List[int]], masks: List[List[int]], rows: List[int], width: int, pad_id: int,
                  state_loss: float = 0.0, heads: bool = True):
    """The demos ``rows`` padded to ``width``, on the device: (tokens [R, width] int32, marks [R, width] int8,
    k), k the LM head's static width per row for `demo_loss_fn` (`read_counts`; 0 without ``heads``)."""
    marks = _pad([masks[i] for i in rows], width, 0).astype(np.int8)
    k = read_counts(marks, state_loss) if heads else 0
    return jnp.asarray(_pad([toks[i] for i in rows], width, pad_id)), jnp.asarray(marks), k


def length_buckets(lengths: List[int], multiple: int, min_rows: int) -> Dict[int, List[int]]:
    """{width: demo indices}: each demo in the smallest multiple of `multiple` holding it; buckets with
    fewer than `min_rows` demos merge upward (a batch is drawn from one bucket). multiple 0: one width."""
    top = int(np.ceil(max(lengths) / 64) * 64)
    if multiple <= 0:
        return {top: list(range(len(lengths)))}
    width = lambda n: min(top, int(np.ceil(n / multiple) * multiple))
    out: Dict[int, List[int]] = {}
    for i, n in enumerate(lengths):
        out.setdefault(width(n), []).append(i)
    merged: Dict[int, List[int]] = {}
    carry: List[int] = []
    for w in sorted(out):
        carry = carry + out[w]
        if len(carry) >= min_rows or w == max(out):
            merged[w] = carry
            carry = []
    widths = sorted(merged)
    if len(widths) > 1 and len(merged[widths[-1]]) < min_rows:  # too few of the longest: join the next
        merged[widths[-1]] = merged.pop(widths[-2]) + merged[widths[-1]]
    return merged


def _merge_stats(a: Dict[str, float], b: Dict[str, float]) -> Dict[str, float]:
    kept = a["kept"] + b["kept"]
    out = dict(a)
    for k in ("turns", "actions"):
        out[k] = (a[k] * a["kept"] + b[k] * b["kept"]) / max(kept, 1)
    for k in ("levels", "kept", "unsolved", "too_long", "windows", "recoveries"):
        out[k] = a[k] + b[k]
    return out


def chance_answer_loss(toks: List[List[int]], masks: List[List[int]]) -> float:
    """The answer loss (mean NLL per answer token) of a model that writes the answer format perfectly
    but picks the answer from the demos' overall frequencies, without reading the state: the entropy
    of the answers' marginal distribution spread over their tokens. A model from scratch first sits
    on this plateau (always the same move); falling well below it means it has learnt to read the grid.
    """
    import collections
    import itertools

    counts: collections.Counter = collections.Counter()
    for ids, mask in zip(toks, masks):  # each maximal run of ANSWER-marked tokens is one answer
        for is_answer, run in itertools.groupby(zip(ids, mask), key=lambda tm: tm[1] == ANSWER):
            if is_answer:
                counts[tuple(t for t, _ in run)] += 1
    n_tokens = sum(len(span) * k for span, k in counts.items())
    if not n_tokens:
        return 0.0
    p = np.array(list(counts.values()), np.float64)
    n = p.sum()
    p /= n
    return float(-(p * np.log(p)).sum() * n / n_tokens)


def demo_loss_fn(graphdef, state_loss: float = 0.0, options=None):
    """The warm start's loss: loss(params, tokens [B, W], marks [B, W], k=0) -> (answer NLL + state_loss x
    feedback NLL, (answer NLL, answer token accuracy)); marks say which tokens are ANSWER / FEEDBACK.
    options: the forward's `llama.ForwardOptions` (from the model.* keys of the same names:
    `Trainer.forward_options`). k (static) > 0 with options.lazy_logits: the LM head at the k positions
    per row the loss reads (`read_counts`: at least every row's count) instead of all W."""
    from wmact_jax.models.llama import NO_OPTIONS
    from wmact_jax.models.llama import apply as model_apply

    options = NO_OPTIONS if options is None else options

    def loss_fn(p, tk, marks, k: int = 0):
        logits = model_apply(graphdef, p, tk, options=options).logits
        m = (marks == ANSWER).astype(jnp.float32)
        lp, _, hits = ppo_lib.next_token_stats(logits, tk, mask=read_marks(marks, state_loss), max_trained=k)
        nll = -jnp.sum(lp * m) / jnp.maximum(jnp.sum(m), 1.0)
        total = nll
        if state_loss:  # a world-model loss: predict the environment's answer to each action
            fm = (marks == FEEDBACK).astype(jnp.float32)
            total = nll + state_loss * (-jnp.sum(lp * fm) / jnp.maximum(jnp.sum(fm), 1.0))
        acc = jnp.sum(hits[:, 1:] * m[:, 1:]) / jnp.maximum(jnp.sum(m[:, 1:]), 1.0)
        return total, (nll, acc)

    return loss_fn


def read_marks(marks, state_loss: float = 0.0):
    """Where the warm start's loss reads the model's predictions: the answers' tokens, and the feedback's with
    a state loss. numpy or jax arrays [B, W] -> bool [B, W]."""
    read = marks == ANSWER
    return (read | (marks == FEEDBACK)) if state_loss else read


def read_counts(marks: np.ndarray, state_loss: float = 0.0) -> int:
    """The most positions (after the first) one row of ``marks [B, W]`` has the loss read: the LM head's
    static width per row for `demo_loss_fn`'s k."""
    return int(read_marks(np.asarray(marks)[:, 1:], state_loss).sum(axis=1).max(initial=0))


def all_demos(trainer):
    """Demonstrations in the trainer's format -> (tokens, masks, stats, basic).

    A `plan_fraction` share of the levels is played with multi-action turns (the rest one action
    per turn), plus a `single_turn_fraction` share written as one-turn whole plans (the entire_plan
    format), so one warm start serves every method of a comparison. basic[i]: demo i is one-action
    play (or a window of it), what the curriculum's first phase trains on.
    """
    c, rc = trainer.config.warmstart, trainer.config.rollout
    n = int(c.num_levels)
    n_single = int(round(n * float(c.single_turn_fraction))) if trainer.max_turns > 1 else 0
    n_plan = int(round((n - n_single) * float(c.plan_fraction)))
    seed = warmstart_seed(trainer.config)
    K = int(rc.max_actions_per_turn)
    kw = dict(chunk=c.chunk, keep_unsolved=bool(c.keep_unsolved), windows=bool(c.windows), recover=float(c.recover),
              budget_aware=bool(c.budget_aware))
    toks, masks, stats = make_demos(trainer, n - n_single - n_plan, seed, trainer.max_turns, K, 0.0,
                                    float(c.noise), **kw)
    basic = [True] * len(toks)
    if n_plan:
        t, m, s = make_demos(trainer, n_plan, seed, trainer.max_turns, K, 1.0, float(c.noise), level_offset=2,
                             plan_actions=int(c.plan_actions), **kw)
        toks, masks, stats, basic = toks + t, masks + m, _merge_stats(stats, s), basic + [False] * len(t)
    if n_single:
        conv1 = trainer.conversation(trainer.env, trainer.grid_codec, int(rc.max_actions), single_turn=True)
        t, m, s = make_demos(trainer, n_single, seed, 1, int(rc.max_actions), 1.0, float(c.noise),
                             conv=conv1, level_offset=1)
        toks, masks, stats, basic = toks + t, masks + m, _merge_stats(stats, s), basic + [False] * len(t)
        stats["single_turn_demos"] = s["kept"]
    return toks, masks, stats, basic


def run_warmstart(trainer, params, log=None, callback=None):
    """Fits the policy to demonstrations; returns (params, metrics). The critic is left as is.

    callback(step, params) is called after every chunk of 10 steps (e.g. a learning-curve study).

    Demos are batched by length (`warmstart.length_bucket`): a batch is padded to its bucket's width,
    not to the longest demo, which roughly halves the cost on multi-turn demos of mixed length.
    With `warmstart.target_loss`, the steps are a cycle repeated (fresh optimizer and schedule) until the
    answer loss is below the target, up to `warmstart.max_cycles`: the outcome of a fixed step count
    depends on the draw (docs/EXPERIMENTS.md, "Cycles until a target loss").
    """
    log = log or (lambda msg: print(msg, flush=True))
    c = trainer.config.warmstart
    t0 = time.perf_counter()
    toks, masks, stats, basic = all_demos(trainer)
    if not toks:
        raise RuntimeError(f"warm start: no usable demonstration ({stats})")
    B = min(int(c.batch_size), len(toks))

    def length_groups(idx_all):  # -> {width: positions in idx_all}
        return length_buckets([len(toks[i]) for i in idx_all], int(c.length_bucket), min(B, len(idx_all)))

    heads = bool(trainer.forward_options(grad=True).lazy_logits)  # the LM head where the loss reads

    def bucketed(idx_all, groups=None):  # -> {width: (tokens, mask, k)}, the arrays on the device
        groups = length_groups(idx_all) if groups is None else groups
        return {w: bucket_arrays(toks, masks, [idx_all[i] for i in idx], w, trainer.pad_id, float(c.state_loss),
                                 heads) for w, idx in groups.items()}

    all_idx = list(range(len(toks)))
    groups = length_groups(all_idx)
    # The mixed phase draws its batches from all demos in proportion to their answer tokens, or (a
    # share in [0, 1]) from the one-action demos with that probability and from the others otherwise.
    # Greedy decoding follows the majority: when most answers in the mix end after one action, the
    # warm-started policy stops every answer after one action (measured on Maze-5x5: 1.00 actions per
    # greedy turn with 61% one-action answers), which leaves annealing nothing to build on.
    share = float(c.mixed_one_action_share)
    rest = [i for i, b in enumerate(basic) if not b]
    mixed_split = bool(0.0 <= share and rest and len(rest) < len(toks))
    # Curriculum: the first steps on one-action play only. Answers that are whole plans (and the
    # detours' random moves) are much harder to predict; mixed in from the start, they kept a model
    # from scratch on its plateau (always the same action) where one-action play alone leaves it
    # within 200 steps (Maze-5x5, measured).
    first = [i for i, b in enumerate(basic) if b]
    phase1_steps = int(round(int(c.steps) * float(c.curriculum))) if first and len(first) < len(toks) else 0
    data1 = bucketed(first) if phase1_steps else {}
    chance = chance_answer_loss([toks[i] for i in first], [masks[i] for i in first]) if first else 0.0
    exit_ratio = float(c.curriculum_exit) if phase1_steps else 0.0
    phase1_max = max(int(c.curriculum_max_steps), phase1_steps) if exit_ratio else phase1_steps
    t_demo = time.perf_counter() - t0
    log(f"warm start: {stats['kept']} demonstrations (+ {stats['windows']} one-turn windows) from {stats['levels']} levels "
        f"({stats['turns']:.1f} turns, {stats['actions']:.1f} actions on average; widths "
        + ", ".join(f"{w}x{len(i)}" for w, i in groups.items()) + f") in {t_demo:.1f}s"
        + (f"; the first {phase1_steps} steps on the {len(first)} one-action ones" if phase1_steps else "")
        + (f", longer (up to {phase1_max}) until their answer loss is below {exit_ratio:g} x {chance:.3f}, "
           "its chance level" if exit_ratio else "")
        + (f"; then {share:.0%} of the batches from one-action demos, {1 - share:.0%} from the {len(rest)} others"
           if mixed_split else ""))

    # The learning rate follows a warmup-cosine schedule over `steps`, evaluated at the step count with
    # the one-action phase's extension (if any) left out: the rate holds still while the phase is extended.
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, float(c.lr), min(20, int(c.steps) // 5), max(int(c.steps), 1), float(c.lr) * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1.0))
    policy = params["policy"]
    opt_state = opt.init(policy)
    loss_fn = demo_loss_fn(trainer.graphdef, float(c.state_loss), trainer.forward_options(grad=True))

    chunk = 10

    @functools.partial(jax.jit, static_argnums=6)
    def train_chunk(p, s, key, sched_step, tokens, mask, k_read):  # compiled once per bucket width (and k_read)
        def one(carry, xs):
            p, s = carry
            k, n = xs
            idx = jax.random.choice(k, tokens.shape[0], (B,), replace=tokens.shape[0] < B)
            (_, (loss, acc)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens[idx], mask[idx], k_read)
            upd, s = opt.update(g, s, p)  # adamw at rate 1, then scaled by the schedule
            lr = schedule(n)
            upd = jax.tree.map(lambda u: lr * u, upd)
            return (optax.apply_updates(p, upd), s), (loss, acc)

        steps_n = sched_step + jnp.arange(chunk, dtype=jnp.int32)
        (p, s), (loss, acc) = jax.lax.scan(one, (p, s), (jax.random.split(key, chunk), steps_n))
        return p, s, loss.mean(), acc.mean()

    seed = warmstart_seed(trainer.config) + 17
    key = jax.random.PRNGKey(seed)
    rng = np.random.default_rng(seed)
    def bucket_weights(d):  # draw buckets in proportion to how many tokens of training signal they hold
        widths = sorted(d)
        weight = np.array([float((np.asarray(d[w][1]) == ANSWER).sum()) for w in widths])
        return widths, weight / weight.sum()

    phase1 = (data1, *bucket_weights(data1)) if phase1_steps else None
    if mixed_split:
        sources = [data1 or bucketed(first), bucketed(rest)]
        phase2 = [(d, *bucket_weights(d)) for d in sources]
        source_p = np.array([share, 1.0 - share])
    else:
        data = bucketed(all_idx, groups)  # the pooled demos (uploaded only when the mixed phase draws from them)
        phase2 = [(data, *bucket_weights(data))]
        source_p = np.ones(1)
    steps = int(c.steps)
    window = 5  # chunks averaged by the exit test (each chunk draws from one length bucket)
    hist = []
    extra = 0  # steps the one-action phase ran past phase1_steps
    in_phase1 = phase1_steps > 0
    phase1_loss = None  # the answer loss at the end of the one-action phase
    mixed_chunks = [0] * len(phase2)  # chunks of the mixed phase drawn from each source
    # Cycles: while the answer loss at the end of a cycle of `steps` is above `target_loss`, another cycle
    # of `steps` mixed steps follows with a fresh optimizer and the schedule restarted (a warm restart),
    # up to `max_cycles` in all: what a further stage trained from the saved policy does, where needed.
    target, max_cycles = float(c.target_loss), max(int(c.max_cycles), 1)
    cycles, cycle_losses = 1, []
    t1 = time.perf_counter()
    i = 0
    while i < steps * cycles + extra:
        if in_phase1 and i >= phase1_steps:
            recent = [h[0] for h in hist[-window:]]
            left = exit_ratio and len(recent) == window and np.mean(recent) < exit_ratio * chance
            if not exit_ratio or left or i >= phase1_max:
                in_phase1 = False
                phase1_loss = float(np.mean(recent))
                log(f"warm start: one-action phase ends at step {i}: answer loss {phase1_loss:.4f}, chance level "
                    f"{chance:.3f}" + ("" if phase1_loss < (exit_ratio or 0.9) * chance else
                                       " (WARNING: still on its plateau: the model does not read the state yet)"))
            else:
                extra += chunk
        key, sub = jax.random.split(key)
        if in_phase1:
            d, widths, weight = phase1
        else:
            src = int(rng.choice(len(phase2), p=source_p)) if len(phase2) > 1 else 0
            d, widths, weight = phase2[src]
            mixed_chunks[src] += 1
        w = widths[int(rng.choice(len(widths), p=weight))]
        sched_step = min(i, phase1_steps) if in_phase1 else i - extra - steps * (cycles - 1)
        policy, opt_state, loss, acc = train_chunk(policy, opt_state, sub, jnp.int32(sched_step), *d[w])
        hist.append((float(loss), float(acc)))
        if callback is not None:
            callback(i + chunk, dict(params, policy=policy))
        if (i // chunk) % 5 == 0 or i + chunk >= steps * cycles + extra:
            log(f"warm start step {i + chunk}/{steps * cycles + extra}: loss {hist[-1][0]:.4f}, "
                f"token accuracy {hist[-1][1]:.3f}")
        i += chunk
        if i >= steps * cycles + extra:  # the end of a cycle
            cycle_losses.append(float(np.mean([h[0] for h in hist[-window:]])))
            if target and cycle_losses[-1] > target and cycles < max_cycles:
                log(f"warm start: answer loss {cycle_losses[-1]:.4f} after cycle {cycles} is above "
                    f"warmstart.target_loss={target:g}: cycle {cycles + 1} (of at most {max_cycles}), {steps} more "
                    "mixed steps with a fresh optimizer and the learning rate schedule restarted")
                cycles, in_phase1, opt_state = cycles + 1, False, opt.init(policy)
    params = dict(params, policy=policy)
    last = hist[-window:]  # average the last chunks: each is from one length bucket
    metrics = {"warmstart/loss": float(np.mean([h[0] for h in last])),
               "warmstart/token_accuracy": float(np.mean([h[1] for h in last])),
               "warmstart/demos": float(stats["kept"]), "warmstart/demo_turns": float(stats["turns"]),
               "warmstart/windows": float(stats["windows"]), "warmstart/recoveries": float(stats["recoveries"]),
               "warmstart/single_turn_demos": float(stats.get("single_turn_demos", 0)),
               "warmstart/steps": float(steps * cycles + extra),
               "warmstart/one_action_steps": float(phase1_steps + extra), "warmstart/cycles": float(cycles),
               "warmstart/chance_loss": chance,
               "warmstart/seconds": time.perf_counter() - t0, "warmstart/train_seconds": time.perf_counter() - t1}
    if phase1_loss is not None:
        metrics["warmstart/one_action_loss"] = phase1_loss
    if cycles > 1:  # the answer loss at the end of each cycle
        metrics.update({f"warmstart/cycle{k + 1}_loss": v for k, v in enumerate(cycle_losses)})
    if mixed_split:
        metrics["warmstart/mixed_chunks"] = float(sum(mixed_chunks))
        metrics["warmstart/mixed_one_action_chunks"] = float(mixed_chunks[0])
    return params, metrics


# ------------------------------------------------------------------ saved warm starts
METRICS_FILE = "warmstart.json"


def save_warmstart(folder: str, trainer, params, metrics: Dict[str, float], overwrite: bool = False) -> str:
    """The warm-started policy as a wmact-jax Orbax checkpoint (+ tokenizer, + `warmstart.json`)."""
    import json
    import os

    from wmact_jax.checkpoints.export import save_orbax

    out = save_orbax(folder, params["policy"], trainer.model_config, tokenizer=trainer.tokenizer,
                     overwrite=overwrite)
    info = {"metrics": metrics, "env": trainer.config.env.name, "config": json.loads(trainer.config.to_json())}
    with open(os.path.join(out, METRICS_FILE), "w") as f:
        json.dump(info, f, indent=1, default=str)
    return out


def load_warmstart(folder: str, trainer, params):
    """params with the policy replaced by the one saved in `folder`; a clear error if it does not fit.

    -> (params, metrics recorded when it was saved).
    """
    import json
    import os

    from flax import nnx

    from wmact_jax.checkpoints.export import load_orbax
    from wmact_jax.checkpoints.hf_folder import CheckpointError

    _, model = load_orbax(folder)
    # The value head is not part of what a warm start teaches (supervised steps never train it): the
    # saved one is ignored and this run's is kept, so a warm start serves a run with or without one.
    saved = nnx.state(model, nnx.Param).to_pure_dict()
    saved.pop("value_head", None)
    current = params["policy"].to_pure_dict()
    head = current.pop("value_head", None)
    want = {jax.tree_util.keystr(k): (v.shape, v.dtype) for k, v in jax.tree_util.tree_leaves_with_path(current)}
    have = {jax.tree_util.keystr(k): (v.shape, v.dtype) for k, v in jax.tree_util.tree_leaves_with_path(saved)}
    problems = [f"missing {k}" for k in want if k not in have]
    problems += [f"unexpected {k}" for k in have if k not in want]
    problems += [f"{k}: saved {have[k][0]} {have[k][1]}, model {want[k][0]} {want[k][1]}"
                 for k in want if k in have and have[k] != want[k]]
    if problems:
        raise CheckpointError(f"warmstart.path={folder!r} does not fit this run's model "
                              f"({len(problems)} problems): " + "; ".join(problems[:8]))
    pure = jax.tree.map(lambda cur, new: jnp.asarray(new, cur.dtype), current, saved)
    if head is not None:
        pure["value_head"] = head
    restored = jax.tree.map(jnp.copy, params["policy"])
    nnx.replace_by_pure_dict(restored, pure)
    metrics = {}
    path = os.path.join(folder, METRICS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            metrics = json.load(f).get("metrics", {})
    return dict(params, policy=restored), metrics


# ------------------------------------------------------------------ command
def main(argv=None) -> None:
    """python -m wmact_jax.warmstart --config=configs/maze_scratch.py --out=DIR [--config.x=y ...]

    Trains the warm start of a config and saves it; runs then start from it with
    `--config.warmstart.path=DIR` (every method of a comparison from the same policy).
    """
    import os
    import sys

    from absl import app, flags
    from ml_collections import config_flags

    from wmact_jax import config_check
    from wmact_jax import main as main_lib  # defines --config (and --workdir, unused here)

    flags.DEFINE_string("out", None, "Folder to write the warm-started policy to.", required=True)
    flags.DEFINE_bool("overwrite", False, "Replace an existing warm start in --out.")

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
            from absl import logging

            logging.set_verbosity(logging.WARNING)
        out = flags.FLAGS.out
        if os.path.isdir(out) and os.listdir(out) and not flags.FLAGS.overwrite:  # fail before training
            print(f"error: --out {out!r} is not empty; pass --overwrite to replace it", file=sys.stderr)
            sys.exit(2)
        config = main_lib._CONFIG.value
        explicit = config_flags.get_override_values(flags.FLAGS["config"]).keys()
        try:
            config = config_check.prepare_config(config, explicit)
        except config_check.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        from wmact_jax.train import Trainer

        trainer = Trainer(config)
        params, metrics = run_warmstart(trainer, initial_params(trainer))
        out = save_warmstart(flags.FLAGS.out, trainer, params, metrics, overwrite=flags.FLAGS.overwrite)
        print(f"warm start saved to {out}: " + ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in metrics.items()))

    sys.argv = main_lib.resolve_config_arg(sys.argv if argv is None else argv)
    app.run(run)


if __name__ == "__main__":
    main()
