"""The in-graph multi-turn rollout equals a host replay of the same episodes, token for token.

A scripted bigram "policy" (logits depend only on the previous token) writes random well-formed
and malformed answers fast; a host replay re-parses its answers, steps the environment and
rebuilds the conversation with the host specification (`Conversation.host_tokens`). Masks, turn
ids, counters and the token stream must all agree. A tiny real transformer checks that the cached
decoding across turns equals a full recomputation.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import envs_jax
from wmact_jax.codec import AnswerCodec, GridCodec, decode_text, parse_answer_text
from wmact_jax.conversation import Conversation
from wmact_jax.models import ModelConfig, Transformer
from wmact_jax.models.kv_cache import KVCache
from wmact_jax.models.llama import ModelOutput
from wmact_jax.models.llama import apply as model_apply
from wmact_jax.models.llama import layer_weights
from wmact_jax.ppo import token_logprobs_and_values
from wmact_jax.rollout import END_REASONS, Rollout, RolloutConfig
from wmact_jax.sampler import SamplingParams
from wmact_jax.tokenization.scratch import build_scratch_tokenizer

K = 3


@pytest.fixture(scope="module")
def setup():
    env, params = envs_jax.make("Maze-5x5", max_steps=12)
    tok = build_scratch_tokenizer()
    grid = GridCodec.build(env, tok)
    conv = Conversation(env, tok, grid, K)
    answer = AnswerCodec.build(env, tok, max_actions=K)
    return env, params, tok, grid, conv, answer


def bigram_table(tok) -> np.ndarray:
    """Logits [V, V]: '\\n' -> <think> -> </think> -> <answer> -> action (-> ' ' -> '||' -> ' action')*
    -> </answer>, with a small chance of ending the turn with <|im_end|> (a malformed answer)."""
    V = len(tok)
    ids = lambda s: tok.encode(s, add_special_tokens=False)
    t = np.full((V, V), -30.0, np.float32)
    nl, = ids("\n")
    think, end_think, ans, end_ans, bar = (tok.convert_tokens_to_ids(x) for x in
                                           ("<think>", "</think>", "<answer>", "</answer>", "||"))
    space, = ids(" ")
    eos = tok.eos_token_id
    first = [ids(a)[0] for a in ("Up", "Down", "Left", "Right")]
    spaced = [ids(" || " + a)[-1] for a in ("Up", "Down", "Left", "Right")]  # ' Up' after the separator
    t[nl, think] = 0.0
    t[think, end_think] = 0.0
    t[think, eos] = -2.0  # sometimes a malformed answer
    t[end_think, ans] = 0.0
    t[ans, first] = 0.0
    for a in first + spaced:
        t[a, space] = 0.0
        t[a, end_ans] = 0.3
    t[space, bar] = 0.0
    t[bar, spaced] = 0.0
    return t


def bigram_apply(table, tokens, cache, num_new):
    logits = jnp.asarray(table)[tokens]
    n = jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32) if num_new is None else num_new
    return ModelOutput(logits, None, cache.replace(lengths=cache.lengths + n))


def fake_cache(batch, max_len):
    z = jnp.zeros((1, batch, max_len, 1, 1), jnp.float32)
    return KVCache(k=z, v=z, lengths=jnp.zeros((batch,), jnp.int32))


def make_rollout(setup, apply_fn, init_cache, levels=6, group=2, turns=4, context=640, max_actions=8,
                 prepare_params=None, share_prompt_head=True, sampled_logprobs=False):
    env, params, tok, grid, conv, answer = setup
    cfg = RolloutConfig(num_levels=levels, group_size=group, max_turns=turns, max_turn_tokens=16,
                        max_actions_per_turn=K, max_actions=max_actions, context_len=context,
                        share_prompt_head=share_prompt_head, sampled_logprobs=sampled_logprobs)
    return Rollout(env, params, conv, answer, apply_fn, cfg, init_cache, [tok.convert_tokens_to_ids("</answer>")],
                   tok.eos_token_id, tok.pad_token_id, prepare_params=prepare_params)


def host_replay(setup, roll: Rollout, batch, key, cap):
    """Re-plays every episode on the host from its model-written tokens; returns expected arrays."""
    env, params, tok, grid, conv, answer = setup
    k_level, _ = jax.random.split(key)
    states = jax.device_get(roll.reset_levels(k_level))
    step = jax.jit(lambda s, a: env.step_env(jax.random.PRNGKey(0), s, a, params))
    render = jax.jit(env.render_glyphs)
    out = []
    for e in range(roll.cfg.num_episodes):
        n = int(batch.length[e])
        toks = np.asarray(batch.tokens[e, :n])
        mask = np.asarray(batch.loss_mask[e, :n])
        runs, cur = [], []
        for i in range(n):  # maximal runs of model-written tokens = the answers
            if mask[i]:
                cur.append(int(toks[i]))
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        state = jax.tree.map(lambda x: x[e], states)
        grids = [np.asarray(render(state))]
        rewards, valid, n_act, n_eff, fmt, success, done = [], [], 0, 0, 0, False, False
        been, revisit = [grids[0]], []  # the grids the episode has been in; per turn: back to one of them
        for t, a_ids in enumerate(runs):
            acts, ok = parse_answer_text(decode_text(tok, a_ids), env.action_names, K)
            r_turn = 0.0
            if ok:
                for a in acts:
                    if done or n_act >= roll.cfg.max_actions:
                        break
                    _, state, r, d, info = step(state, jnp.int32(a))
                    r_turn += float(r)
                    n_act += 1
                    n_eff += int(info.effective)
                    if bool(d):
                        done, success = True, bool(info.success)
            else:
                fmt += 1
            rewards.append(r_turn)
            valid.append(ok)
            now = np.asarray(render(state))
            revisit.append(ok and any(np.array_equal(now, g) for g in been))
            been.append(now)
            if t + 1 < len(runs):
                grids.append(np.asarray(render(state)))
        ids, m = conv.host_tokens(grids, runs, rewards, valid, turn_cap=cap)
        out.append(dict(ids=ids, mask=m, turns=len(runs), n_act=n_act, n_eff=n_eff, fmt=fmt, success=success,
                        rewards=rewards, valid=valid, revisit=revisit))
    return out


def with_turns_left(setup, max_turns=4):
    """The setup with a conversation that states the turns left in each user message."""
    env, params, tok, grid, conv, answer = setup
    return env, params, tok, grid, Conversation(env, tok, grid, K, turns_left=True, max_turns=max_turns), answer


@pytest.mark.parametrize("cap,turns_left", [(1, False), (3, False), (1, True), (3, True)])
def test_rollout_equals_host_replay(setup, cap, turns_left):
    """With `turns_left`, each user message holds 'Turns left: n' for the traced cap (host: from the cap)."""
    if turns_left:
        setup = with_turns_left(setup)
    env, params, tok, *_ = setup
    table = bigram_table(tok)
    roll = make_rollout(setup, lambda p, t, c, n: bigram_apply(p, t, c, n), fake_cache)
    run = jax.jit(lambda p, k, cap: roll.run(p, k, cap, SamplingParams(temperature=jnp.float32(1.0)))[0])
    key = jax.random.PRNGKey(3)
    batch = jax.device_get(run(jnp.asarray(table), key, jnp.int32(cap)))
    want = host_replay(setup, roll, batch, key, cap)
    S = roll.cfg.context_len
    saw_valid = saw_invalid = saw_revisit = saw_new = False
    for e, w in enumerate(want):
        n = int(batch.length[e])
        assert n <= S
        np.testing.assert_array_equal(np.asarray(batch.tokens[e, :n]), w["ids"], err_msg=f"episode {e}")
        np.testing.assert_array_equal(np.asarray(batch.loss_mask[e, :n]).astype(int), w["mask"])
        assert not np.asarray(batch.loss_mask[e, n:]).any()  # nothing past the end is trained on
        tid = np.asarray(batch.turn_id[e, :n])
        assert (tid[np.asarray(w["mask"]) == 0] == -1).all()  # env-written tokens have no turn
        assert int(batch.turns[e]) == w["turns"] <= cap
        assert int(batch.n_actions[e]) == w["n_act"] <= roll.cfg.max_actions
        assert int(batch.n_effective[e]) == w["n_eff"]
        assert int(batch.format_errors[e]) == w["fmt"]
        assert bool(batch.success[e]) == w["success"]
        np.testing.assert_allclose(np.asarray(batch.turn_rewards[e, : w["turns"]]), w["rewards"], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(batch.turn_revisit[e, : w["turns"]]), w["revisit"])
        assert not np.asarray(batch.turn_revisit[e, w["turns"]:]).any()
        saw_valid |= any(w["valid"])
        saw_invalid |= not all(w["valid"])
        saw_revisit |= any(w["revisit"])
        saw_new |= any(v and not r for v, r in zip(w["valid"], w["revisit"]))
        reason = END_REASONS[int(batch.end_reason[e])]
        if w["success"]:
            assert reason == "solved"
        elif w["turns"] == cap:
            assert reason in ("turn_cap", "action_cap", "env_step_limit", "context_full")
    assert saw_valid and saw_invalid  # the script exercised both paths
    if cap > 1:  # random moves in a maze: some turns come back to a state, some reach a new one
        assert saw_revisit and saw_new
    # Episodes of one group share their level: identical first prompt.
    first_len = [int(np.argmax(np.asarray(batch.loss_mask[e]))) for e in range(len(want))]
    assert first_len[0] == first_len[1]
    np.testing.assert_array_equal(batch.tokens[0, : first_len[0]], batch.tokens[1, : first_len[1]])
    text = tok.decode(np.asarray(batch.tokens[0, : int(batch.length[0])]).tolist())
    assert (f"Turns left: {cap}\n" in text) == turns_left
    if turns_left and cap == 3 and int(batch.turns[0]) > 1:
        assert "Turns left: 2\n" in text


def test_turns_left_table_must_cover_the_turn_bound(setup):
    with pytest.raises(ValueError, match="max_turns >= 4"):
        make_rollout(with_turns_left(setup, max_turns=3), lambda p, t, c, n: bigram_apply(p, t, c, n), fake_cache,
                     turns=4)
    make_rollout(with_turns_left(setup, max_turns=4), lambda p, t, c, n: bigram_apply(p, t, c, n), fake_cache,
                 turns=4)


def test_turn_cap_is_traced_and_context_budget_ends_episodes(setup):
    env, params, tok, *_ = setup
    table = jnp.asarray(bigram_table(tok))
    conv = setup[4]
    # Room for the prompt and about one more turn only: episodes must end on the context budget.
    small = conv.max_prompt_len + 16 + conv.max_feedback_len + 8
    roll = make_rollout(setup, lambda p, t, c, n: bigram_apply(p, t, c, n), fake_cache, context=small, turns=4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(p, k, cap):
        return roll.run(p, k, cap, SamplingParams(temperature=jnp.float32(1.0)))[0]

    for cap in (1, 2, 4):
        b = run(table, jax.random.PRNGKey(cap), jnp.int32(cap))
        assert int(jnp.max(b.turns)) <= cap
        assert int(jnp.max(b.length)) <= small
    assert bool(jnp.any(b.end_reason == END_REASONS.index("context_full")))


@pytest.mark.parametrize("share_prompt_head", [True, False])
def test_cached_decoding_matches_full_recomputation(setup, share_prompt_head):
    """Greedy rollout of a tiny transformer: every model token is the argmax of a full forward. The policy
    reads its per-layer weights sliced once per rollout (prepare_params), as the trainer's does. With
    `share_prompt_head` the prompt's common head is prefilled once and its cache copied to every episode."""
    env, params, tok, *_ = setup
    mc = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                     num_kv_heads=1, max_position_embeddings=1024, value_head=True)
    model = Transformer(mc)
    model.value_head.kernel.value = 0.3 * jax.random.normal(jax.random.PRNGKey(5), model.value_head.kernel.value.shape)
    graphdef, state = nnx.split(model)
    prepare = lambda p: (p, layer_weights(graphdef, p))
    apply_fn = lambda pl, t, c, n: model_apply(graphdef, pl[0], t, c, n, layer_weights=pl[1])
    roll = make_rollout(setup, apply_fn, lambda b, s: KVCache.init(mc, b, s), levels=2, group=2, turns=3,
                        context=512, prepare_params=prepare, share_prompt_head=share_prompt_head)
    run = jax.jit(lambda p, k: roll.run(p, k, jnp.int32(3), SamplingParams(temperature=jnp.float32(0.0)))[0])
    b = jax.device_get(run(state, jax.random.PRNGKey(0)))
    full = model_apply(graphdef, state, jnp.asarray(b.tokens))
    pred = np.asarray(jnp.argmax(full.logits, axis=-1))
    lp, v, _ = token_logprobs_and_values(full.logits, full.values, jnp.asarray(b.tokens))
    for e in range(b.tokens.shape[0]):
        n = int(b.length[e])
        pos = np.flatnonzero(np.asarray(b.loss_mask[e, :n]))
        assert pos.size > 0
        np.testing.assert_array_equal(pred[e, pos - 1], np.asarray(b.tokens[e, pos]))
        # The sampler's log-probs and values (PPO's "old" numbers) equal the full forward's.
        np.testing.assert_allclose(np.asarray(b.logprobs[e, pos]), np.asarray(lp[e, pos]), atol=1e-4)
        np.testing.assert_allclose(np.asarray(b.values[e, pos]), np.asarray(v[e, pos]), atol=1e-4)
        assert np.abs(np.asarray(v[e, pos])).max() > 1e-3  # a random value head: the check is not vacuous
    assert not np.asarray(b.logprobs)[~np.asarray(b.loss_mask)].any()


def test_sampled_logprobs_are_the_tempered_policy_s(setup):
    """At temperature 0.5 with `sampled_logprobs`, the rollout records log softmax(logits / 0.5) of each
    model token, from a full forward: PPO's "old" log-probs of the tempered policy it trains."""
    env, params, tok, *_ = setup
    mc = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                     num_kv_heads=1, max_position_embeddings=1024)
    graphdef, state = nnx.split(Transformer(mc))
    apply_fn = lambda p, t, c, n: model_apply(graphdef, p, t, c, n)
    roll = make_rollout(setup, apply_fn, lambda b, s: KVCache.init(mc, b, s), levels=2, group=2, turns=2,
                        context=512, sampled_logprobs=True)
    run = jax.jit(lambda p, k: roll.run(p, k, jnp.int32(2), SamplingParams(temperature=jnp.float32(0.5)))[0])
    b = jax.device_get(run(state, jax.random.PRNGKey(3)))
    full = model_apply(graphdef, state, jnp.asarray(b.tokens))
    tempered, _, _ = token_logprobs_and_values(full.logits, jnp.zeros(b.tokens.shape), jnp.asarray(b.tokens), 0.5)
    raw, _, _ = token_logprobs_and_values(full.logits, jnp.zeros(b.tokens.shape), jnp.asarray(b.tokens))
    mask = np.asarray(b.loss_mask)
    assert mask.sum() > 0
    np.testing.assert_allclose(np.asarray(b.logprobs)[mask], np.asarray(tempered)[mask], atol=1e-4)
    assert np.abs(np.asarray(raw)[mask] - np.asarray(tempered)[mask]).max() > 1e-2  # not the raw policy's
