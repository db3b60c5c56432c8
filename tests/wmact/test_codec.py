"""In-graph codec == host rendering + tokenization, for the scratch and SmolLM2 (GGUF) tokenizers."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmact_jax.codec import (
    AnswerCodec,
    CodecError,
    GridCodec,
    decode_text,
    listed_grids,
    parse_answer_text,
)
from wmact_jax.tokenization.gguf_tokenizer import smollm2_gguf_path, tokenizer_from_gguf
from wmact_jax.tokenization.scratch import build_scratch_tokenizer

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
K = 6


class FakeEnv:
    """The interface the codec uses: glyphs, action names, grid_shape, glyphs_to_text."""

    name = "Fake"
    glyphs = ("#", "_", "O", "√", "X", "P", "S", "|", "G")
    action_names = ("Up", "Down", "Left", "Right", "Upper")  # 'Up' is a prefix of 'Upper'
    grid_shape = (5, 6)

    def glyphs_to_text(self, grid, sep=""):
        return "\n".join(sep.join(self.glyphs[int(g)] for g in row) for row in np.asarray(grid))


@pytest.fixture(scope="module")
def toks():
    out = {"scratch": build_scratch_tokenizer()}
    path = smollm2_gguf_path()
    if os.path.exists(path):
        out["smollm2"] = tokenizer_from_gguf(path)
    return out


def _envs():
    envs = {"fake": FakeEnv()}
    try:
        import envs_jax

        for name in ("Sokoban-Standard", "Maze-7x7", "Taxi-v3"):
            envs[name] = envs_jax.make(name)[0]
    except Exception:  # environments not importable: fake only
        pass
    return envs


ENVS = _envs()
TOK_NAMES = ("scratch", "smollm2")


@pytest.fixture(scope="module")
def grid_codecs(toks):
    return {(e, t): GridCodec.build(env, toks[t]) for e, env in ENVS.items() for t in toks}


@pytest.fixture(scope="module")
def answer_codecs(toks):
    return {(e, t): AnswerCodec.build(env, toks[t], K) for e, env in ENVS.items() for t in toks
            if t == "scratch" or e in ("fake", "Taxi-v3")}  # ~3 s each for a 49k vocabulary


# ---- grids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_name", list(ENVS))
@pytest.mark.parametrize("tok_name", TOK_NAMES)
def test_grid_encode_matches_host(env_name, tok_name, toks, grid_codecs):
    if tok_name not in toks:
        pytest.skip("no GGUF")
    env, tok, codec = ENVS[env_name], toks[tok_name], grid_codecs[(env_name, tok_name)]
    real = listed_grids(env)
    if tok_name == "scratch" and ("|" not in env.glyphs or real is not None):
        assert codec.cell_sep == "" and codec.max_len == codec.rows * codec.cols + codec.rows - 1
    if tok_name == "smollm2":
        assert codec.cell_sep == " "
    enc = jax.jit(codec.encode)
    rows, cols = codec.rows, codec.cols
    # The grids the codec was verified on: the env's own when it lists them (Taxi), else any glyphs.
    cells_st = (st.sampled_from(range(len(real))).map(lambda i: real[i].reshape(-1).tolist()) if real is not None
                else st.lists(st.integers(0, len(env.glyphs) - 1), min_size=rows * cols, max_size=rows * cols))

    @SETTINGS
    @given(cells_st)
    def check(cells):
        grid = np.array(cells, np.int32).reshape(rows, cols)
        t, n = enc(grid)
        want = tok.encode(codec.render_text(grid), add_special_tokens=False)
        assert codec.render_text(grid) == env.glyphs_to_text(grid, sep=codec.cell_sep)
        assert np.asarray(t[:n]).tolist() == want
        assert np.all(np.asarray(t[n:]) == codec.pad_id)

    check()


def test_real_env_observations(toks, grid_codecs):
    for e, env in ENVS.items():
        if e != "Taxi-v3":  # level generators are slow to compile; random grids cover their glyphs
            continue
        obs = jnp.stack([env.reset(k)[0] for k in jax.random.split(jax.random.PRNGKey(3), 2)])
        for t in toks:
            codec = grid_codecs[(e, t)]
            tt, nn = jax.jit(jax.vmap(codec.encode))(obs)
            for i in range(2):
                want = toks[t].encode(env.glyphs_to_text(np.asarray(obs[i]), sep=codec.cell_sep),
                                      add_special_tokens=False)
                assert np.asarray(tt[i, : nn[i]]).tolist() == want


def test_taxi_grid_without_separator_only_on_real_grids(toks):
    """Taxi's scratch encoding needs no separator because its walls never touch: one token per glyph
    (83 for Taxi-v3, against 153 with ' '). On random glyph grids `||` would be the action-separator
    token, so the same build without the env's grid list must fail."""
    if "Taxi-v3" not in ENVS:
        pytest.skip("no environments")
    env = ENVS["Taxi-v3"]
    assert GridCodec.build(env, toks["scratch"]).max_len == 83

    class RandomGridsOnly:
        glyphs, grid_shape, glyphs_to_text = env.glyphs, env.grid_shape, env.glyphs_to_text

    with pytest.raises(CodecError, match="not compositional"):
        GridCodec.build(RandomGridsOnly(), toks["scratch"], cell_sep="")


def test_grid_not_compositional_raises(toks):
    if "smollm2" not in toks:
        pytest.skip("no GGUF")
    with pytest.raises(CodecError, match="not compositional"):
        GridCodec.build(FakeEnv(), toks["smollm2"], cell_sep="")  # '##' merges in BPE


def test_grid_jit_vmap_no_retrace(toks):
    chex.clear_trace_counter()
    codec = GridCodec.build(FakeEnv(), toks["scratch"], cell_sep=" ", prefix="Map:\n", suffix="\nEnd")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def enc(grids):
        return jax.vmap(codec.encode)(grids)

    rng = np.random.default_rng(0)
    for _ in range(3):
        grids = rng.integers(0, len(FakeEnv.glyphs), (4, 5, 6), dtype=np.int32)
        t, n = enc(grids)
        for i in range(4):
            assert np.asarray(t[i, : n[i]]).tolist() == toks["scratch"].encode(
                codec.render_text(grids[i]), add_special_tokens=False)


# ---- the conversation's pieces with the turns-left count ------------------------------------


@pytest.mark.parametrize("env_name", ["Sokoban-Standard", "Taxi-v3"])
@pytest.mark.parametrize("tok_name", TOK_NAMES)
def test_conversation_turns_left_in_graph_matches_host(env_name, tok_name, toks, grid_codecs):
    """Conversation(turns_left=True): the in-graph prompt and feedback (traced count) equal the host pieces
    of the chat-template specification, for a count of 0..max_turns (construction checks the composition)."""
    if tok_name not in toks or env_name not in ENVS:
        pytest.skip("no GGUF or environments")
    from wmact_jax.conversation import Conversation

    chex.clear_trace_counter()
    tok, env = toks[tok_name], ENVS[env_name]
    conv = Conversation(env, tok, grid_codecs[(env_name, tok_name)], K, style="compact", turns_left=True,
                        max_turns=12)
    prompt = jax.jit(conv.initial_prompt)
    feedback = jax.jit(chex.assert_max_traces(n=1)(conv.feedback))
    rows, cols = env.grid_shape
    rng = np.random.default_rng(0)
    answer = tok.encode("<think>go</think><answer>" + env.action_names[0] + "</answer>", add_special_tokens=False)
    real = env.enumerate_grids()  # Taxi's grids (its codec is verified on these), else None
    for cap in (1, 2, 7, 12):
        g0, g1 = (real[rng.integers(len(real))] if real is not None
                  else rng.integers(0, len(env.glyphs), (rows, cols), dtype=np.int32) for _ in range(2))
        only_prompt, _ = conv.host_tokens([g0], [], [], [], turn_cap=cap)
        t, n = prompt(g0, jnp.int32(cap))
        assert np.asarray(t[:n]).tolist() == only_prompt
        both, _ = conv.host_tokens([g0, g1], [answer], [-0.3], [cap % 2 == 0], turn_cap=cap)
        t, n = feedback(jnp.float32(-0.3), jnp.bool_(cap % 2 == 0), g1, jnp.int32(answer[-1]), jnp.int32(cap - 1))
        assert np.asarray(t[:n]).tolist() == both[len(only_prompt) + len(answer):]
        assert f"Turns left: {cap - 1}\n" in tok.decode(both[len(only_prompt):])
    with pytest.raises(ValueError, match="turns left"):
        conv.host_tokens([g0], [], [], [])
    with pytest.raises(ValueError, match="outside"):
        conv.host_tokens([g0], [], [], [], turn_cap=13)


# ---- answers -----------------------------------------------------------------------------------

WS = st.sampled_from([" ", "", "  ", "\n", "\t", " \n "])
JUNK = st.lists(st.sampled_from(list("ab <>|/\n#UpDownx√é") + ["<answer>", "</answer>", "||", "<think>"]),
                max_size=12).map("".join)


def _answers(names):
    name = st.sampled_from(names).flatmap(
        lambda n: st.lists(st.booleans(), min_size=len(n), max_size=len(n)).map(
            lambda up: "".join(c.upper() if u else c.lower() for c, u in zip(n, up))))
    word = st.one_of(name, name, name, st.sampled_from(["Jump", "Upp", "", "U p", "Up,", "rightt"]))
    sep = st.tuples(WS, st.sampled_from(["||", "||", "||", "|", "", "|||"]), WS).map("".join)

    @st.composite
    def answer(draw):
        words = draw(st.lists(word, min_size=0, max_size=K + 2))
        body = draw(WS)
        for i, w in enumerate(words):
            body += (draw(sep) if i else "") + w
        body += draw(WS)
        think = draw(st.one_of(st.just(""), st.text(max_size=20).map(lambda s: f"<think>{s}</think>"), JUNK))
        open_, close = draw(st.sampled_from([("<answer>", "</answer>")] * 6 + [("", "</answer>"), ("<answer>", ""),
                                             ("<Answer>", "</answer>"), ("<answer>", "</answer")]))
        tail = draw(st.one_of(st.just(""), JUNK))
        text = think + draw(WS) + open_ + body + close + tail
        cut = draw(st.one_of(st.none(), st.integers(0, len(text))))  # truncated generations
        return text if cut is None else text[:cut]

    return answer()


@pytest.mark.parametrize("env_name", list(ENVS))
@pytest.mark.parametrize("tok_name", TOK_NAMES)
def test_answer_decode_matches_parser(env_name, tok_name, toks, answer_codecs):
    if (env_name, tok_name) not in answer_codecs:
        pytest.skip("not built (no GGUF, or same action names as another env)")
    env, tok, codec = ENVS[env_name], toks[tok_name], answer_codecs[(env_name, tok_name)]
    T = 96
    chex.clear_trace_counter()
    dec = jax.jit(chex.assert_max_traces(n=1)(codec.decode))

    def run(ids):
        ids = ids[:T]
        buf = np.full(T, tok.pad_token_id or 0, np.int32)
        buf[: len(ids)] = ids
        acts, n, valid = dec(buf, np.int32(len(ids)))
        spec, ok = parse_answer_text(decode_text(tok, ids), env.action_names, K)
        assert bool(valid) == ok, (decode_text(tok, ids), spec)
        assert int(n) == len(spec)
        assert np.asarray(acts).tolist() == spec + [-1] * (K - len(spec))
        return ok

    @SETTINGS
    @given(_answers(env.action_names))
    def check(text):
        run(tok.encode(text, add_special_tokens=False))

    check()
    # explicit cases
    a = env.action_names
    assert run(tok.encode(f"<think>hm</think><answer>{a[0]} || {a[1].upper()}</answer>", add_special_tokens=False))
    assert not run(tok.encode(f"<answer>{' || '.join([a[0]] * (K + 1))}</answer>", add_special_tokens=False))
    assert not run(tok.encode("<answer></answer>", add_special_tokens=False))
    assert not run(tok.encode(f"<answer>{a[0]} ||</answer>", add_special_tokens=False))
    # random token ids (what an untrained model emits), biased towards answer-ish tokens
    rng = np.random.default_rng(0)
    pool = sorted(set(tok.encode("<answer></answer>" + " || ".join(a) + " ||" + " ".join(a).lower(),
                                 add_special_tokens=False)))
    for _ in range(30):
        ids = np.where(rng.random(40) < 0.8, rng.choice(pool, 40), rng.integers(0, len(tok), 40)).tolist()
        run(ids)


def test_answer_vmap_and_out_of_vocab(toks, answer_codecs):
    tok, codec = toks["scratch"], answer_codecs[("fake", "scratch")]
    texts = ["<answer>Up || upper</answer>", "<answer>Up</answer>", "no answer", "<answer>Upper||DOWN ||left</answer>"]
    T = 32
    batch = np.zeros((len(texts), T), np.int32)
    lens = []
    for i, s in enumerate(texts):
        ids = tok.encode(s, add_special_tokens=False)
        batch[i, : len(ids)] = ids
        lens.append(len(ids))
    acts, n, valid = jax.jit(jax.vmap(codec.decode))(batch, np.array(lens, np.int32))
    assert valid.tolist() == [True, True, False, True]
    assert n.tolist() == [2, 1, 0, 3]
    assert acts[3, :3].tolist() == [4, 1, 2]
    bad = batch[1].copy()
    bad[0] = 10**6  # an id beyond the vocabulary (e.g. a padded embedding row)
    assert not bool(codec.decode(jnp.asarray(bad), lens[1])[2])


def test_parser_spec_examples():
    names = ("Up", "Down", "Left", "Right")
    assert parse_answer_text("<think>x</think><answer> up||RIGHT \n</answer>", names, 3) == ([0, 3], True)
    assert parse_answer_text("<answer>Up Right</answer>", names, 3) == ([], False)
    assert parse_answer_text("<answer>Up || Jump</answer>", names, 3) == ([], False)
    assert parse_answer_text("<answer>Up || Up || Up || Up</answer>", names, 3) == ([], False)
    assert parse_answer_text("<answer>Up", names, 3) == ([], False)
    assert parse_answer_text("<answer>\u212aUp</answer>", names, 3) == ([], False)  # no Unicode case folding
