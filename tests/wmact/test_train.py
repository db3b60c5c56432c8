"""The real Trainer on a tiny config: one jitted iteration, traced turn cap, exact resume, 8 devices."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from configs.base import get_config  # noqa: E402
from wmact_jax.train import Trainer  # noqa: E402

from .subprocess_env import subprocess_env  # noqa: E402

TINY = textwrap.dedent("""
    def tiny_config():
        from configs.base import get_config
        c = get_config()
        c.env.name = "Maze-5x5"
        c.env.max_steps = 20
        c.model.hidden_size, c.model.intermediate_size = 32, 64
        c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = 2, 2, 1
        c.rollout.levels_per_iteration, c.rollout.group_size = 4, 2
        c.rollout.max_turn_tokens, c.rollout.max_actions_per_turn, c.rollout.max_actions = 8, 2, 6
        c.rollout.context_len, c.rollout.system_prompt = 256, "compact"
        c.anneal.l0, c.anneal.tau = 3, 1
        c.ppo.minibatches, c.ppo.epochs = 2, 1
        c.warmstart.enabled = False
        c.train.eval_levels = 2
        return c
""")
exec(TINY)  # defines tiny_config()


@pytest.fixture(scope="module")
def trainer():
    return Trainer(tiny_config(), "")


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.ppo.params))]


def test_iteration_runs_compiles_once_and_cap_is_traced(trainer):
    st = trainer.init_state(jax.random.PRNGKey(0))
    # Fresh (uncommitted) arrays, then iteration's committed outputs, then a fresh one again (l_max
    # below): always the same compiled program (checked at the end).
    assert not any(x.committed for x in jax.tree.leaves(st))
    trainer.evaluate(st)  # the evaluation before training sees the fresh params (one compile, checked below)
    st, m = trainer.iteration(st)
    m = jax.device_get(m)
    assert int(st.iteration) == 1
    for k, v in m.items():
        assert np.isfinite(v), k
    assert m["turn_cap"] == 3
    # Annealing moves the cap: set L_max by hand, the same compiled program runs with the new cap.
    st = st.replace(anneal=st.anneal.replace(l_max=jnp.float32(1.0)))
    st, m = trainer.iteration(st)
    assert float(m["turn_cap"]) == 1 and float(m["mean_turns"]) <= 1
    assert trainer._iteration_jit._cache_size() == 1
    metrics, texts = trainer.evaluate(st, transcripts=1)
    assert 0 <= metrics["success_rate"] <= 1 and "<|im_start|>" in texts[0]
    # greedy_l0: the starting cap whatever the annealing did, on the same compiled evaluation.
    at_l0, _ = trainer.evaluate(st, initial_cap=True)
    assert metrics["turn_cap"] == 1 and at_l0["turn_cap"] == 3 and at_l0["mean_turns"] <= 3
    # eval_batch: the episodes evaluate() summarises, on the same compiled evaluation.
    batch = trainer.eval_batch(st.ppo.params, 1, 0.0)
    assert isinstance(batch.success, np.ndarray) and float(np.mean(batch.success)) == metrics["success_rate"]
    assert trainer._eval_jit._cache_size() == 1
    with pytest.raises(ValueError, match="exclusive"):
        trainer.evaluate(st, single_turn=True, initial_cap=True)


def test_multi_turn_methods_lower_to_one_program():
    """interactive, rescale, wmact and step_penalty differ only in the traced switches: their
    iterations lower to the same program (a suite's compilation cache compiles it once), while the
    switches themselves still say which method runs. Lowered: interactive (every switch off),
    step_penalty and wmact + revisit penalty (between them every switch on)."""
    from wmact_jax.config_check import prepare_config

    texts, switches = {}, {}
    for method in ("interactive", "rescale", "wmact", "step_penalty", "wmact+revisit"):
        c = tiny_config()
        c.method = method.split("+")[0]
        c.reward.revisit_penalty = 0.2 if "+revisit" in method else 0.0
        tr = Trainer(prepare_config(c), "")
        switches[method] = {k: v.item() for k, v in tr.switches.items()}
        if method in ("interactive", "step_penalty", "wmact+revisit"):
            st = jax.eval_shape(tr.init_state, jax.random.PRNGKey(0))
            texts[method] = tr._iteration_jit.lower(st, tr.switches).as_text()
    assert len(texts) == 3 and len(set(texts.values())) == 1
    # Every switch that tells the five apart takes both of its values among the three lowered.
    for k in switches["interactive"]:
        if len({s[k] for s in switches.values()}) > 1:
            assert len({switches[m][k] for m in texts}) == 2, k
    i = switches["interactive"]
    assert not i["rescale"] and i["step_penalty"] == 0.0 and not i["anneal_adaptive"]
    assert switches["rescale"]["rescale"] and not switches["rescale"]["anneal_adaptive"]
    assert switches["wmact"]["rescale"] and switches["wmact"]["anneal_adaptive"]
    assert switches["step_penalty"]["step_penalty"] == pytest.approx(0.1)
    assert not switches["step_penalty"]["anneal_adaptive"]
    assert switches["wmact+revisit"]["revisit_penalty"] == pytest.approx(0.2)
    assert switches["wmact"]["revisit_penalty"] == 0.0


@pytest.mark.parametrize("unit", ["action", "turn"])
def test_turn_placed_rewards_sum_to_the_episode_reward(trainer, unit):
    """With rewards placed per turn (the default), each turn's penalties sit at its last token and the
    (rescaled) outcome at the episode's last; per episode they add up to the episode reward."""
    import dataclasses

    st = trainer.init_state(jax.random.PRNGKey(0))
    b = jax.tree.map(jnp.asarray, trainer.eval_batch(st.ppo.params, cap=3, temperature=1.0))
    # An untrained policy rarely writes a valid answer: give its taken turns 1 or 2 actions each, and
    # every second turn a format error, so that both penalties are exercised.
    L = b.turn_actions.shape[1]
    took = jnp.arange(L)[None, :] < b.turns[:, None]
    acts = (took * (1 + jnp.arange(L) % 2)).astype(jnp.int32)
    valid = ~took | (jnp.arange(L) % 2 == 1)
    revisit = took & valid & (jnp.arange(L) % 4 == 1)  # some valid turns came back to an earlier state
    b = b.replace(turn_actions=acts, n_actions=acts.sum(1), turn_valid=valid, turn_revisit=revisit,
                  format_errors=(took & ~valid).sum(1).astype(jnp.int32))
    switches = dict(trainer.switches, rescale=np.bool_(True), format_penalty=np.float32(0.25),
                    step_penalty=np.float32(0.1), revisit_penalty=np.float32(0.5))
    saved = trainer._reward_program
    trainer._reward_program = dataclasses.replace(saved, step_penalty_unit=unit)
    try:
        data, parts = trainer._ppo_batch(st.ppo.params, None, b, switches)
    finally:
        trainer._reward_program = saved
    assert trainer.config.reward.placement == "turn"
    steps = b.n_actions if unit == "action" else b.turns
    np.testing.assert_allclose(parts["step"], -0.1 * np.asarray(steps), rtol=1e-6)
    np.testing.assert_allclose(parts["revisit"], -0.5 * np.asarray(revisit).sum(1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(data["rewards"]).sum(axis=1), parts["total"], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(parts["step"]).sum()) > 0 and float(jnp.abs(parts["format"]).sum()) > 0
    assert float(jnp.abs(parts["revisit"]).sum()) > 0


def test_bfloat16_kv_cache_rollout_stays_close_to_float32(trainer):
    """model.kv_cache_dtype=bfloat16 under the float32 model: the rollout's cache is bfloat16, and the
    log-probs the sampler records stay close to the float32 cache's on the same episodes."""
    from wmact_jax.config_check import prepare_config

    c = tiny_config()
    c.model.kv_cache_dtype = "bfloat16"
    tr = Trainer(prepare_config(c), "")
    assert tr._init_cache(2, 64).k[0].dtype == jnp.bfloat16
    assert trainer._init_cache(2, 64).k[0].dtype == jnp.float32
    st = trainer.init_state(jax.random.PRNGKey(0))
    ref = trainer.eval_batch(st.ppo.params, cap=2, temperature=0.0)
    bf = tr.eval_batch(st.ppo.params, cap=2, temperature=0.0)
    # Greedy episodes of an untrained model: the first turn's tokens agree, and so do their log-probs.
    first = (np.asarray(ref.loss_mask) > 0) & (np.asarray(ref.turn_id) == 0)
    same = first & (np.asarray(bf.tokens) == np.asarray(ref.tokens))
    assert same.sum() >= 0.9 * first.sum() > 0
    np.testing.assert_allclose(np.asarray(bf.logprobs)[same], np.asarray(ref.logprobs)[same], atol=0.05)


def test_shared_prompt_head_gives_the_same_iteration(trainer):
    """rollout.share_prompt_head (the default, `trainer`) against off: the same episodes from the same key,
    and one update (separate critic included) to the same parameters, up to float round-off."""
    from wmact_jax.config_check import prepare_config

    c = tiny_config()
    c.rollout.share_prompt_head = False
    off = Trainer(prepare_config(c), "")
    assert trainer.shared_head == len(trainer.conv.prompt_head) > 0 and off.shared_head == 0
    st = trainer.init_state(jax.random.PRNGKey(0))
    a = jax.device_get(trainer.eval_batch(st.ppo.params, cap=3, temperature=1.0))
    b = jax.device_get(off.eval_batch(st.ppo.params, cap=3, temperature=1.0))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    head = np.asarray(trainer.conv.prompt_head)
    assert (np.asarray(a.tokens)[:, : head.size] == head).all()  # what shared_head= relies on
    new_on, m_on = trainer.iteration(jax.tree.map(jnp.array, st))
    new_off, m_off = off.iteration(jax.tree.map(jnp.array, st))
    for k in ("success_rate", "mean_turns", "ppo/policy_loss", "ppo/value_loss"):
        np.testing.assert_allclose(float(m_on[k]), float(m_off[k]), rtol=1e-3, atol=1e-5, err_msg=k)
    for x, y in zip(_leaves(new_on), _leaves(new_off)):
        np.testing.assert_allclose(x, y, atol=1e-3)


def test_remat_and_logits_chunk_reach_the_update():
    """model.remat, model.remat_attention, model.flash_attention, model.mlp_chunk and model.logits_chunk reach
    the PPO update (test_remat.py, test_flash_attention.py: the same gradients): the iteration's program holds
    rematerialised regions with each remat (and mlp_chunk's chunks) and none without, flash_attention's
    backward pass with it, and with logits_chunk no [.., S, V] logits of a whole episode."""
    import re

    from wmact_jax.config_check import prepare_config

    def program(remat, chunk, remat_attention=False, flash_attention=False, mlp_chunk=0):
        c = tiny_config()
        c.model.remat, c.model.logits_chunk, c.model.remat_attention = remat, chunk, remat_attention
        c.model.flash_attention, c.model.mlp_chunk = flash_attention, mlp_chunk
        t = Trainer(prepare_config(c), "")
        return t, str(jax.make_jaxpr(t.iteration)(t.init_state(jax.random.PRNGKey(0))))

    regions = lambda jaxpr: len(re.findall(r"\bremat\w*\[", jaxpr))
    t, plain = program(False, 0)
    assert regions(plain) == 0
    assert regions(program(True, 0)[1]) >= 2  # the policy's and the separate critic's forwards
    assert regions(program(False, 0, True)[1]) >= 2  # their attention's query blocks
    assert regions(program(False, 0, mlp_chunk=8)[1]) >= 2  # their MLPs' token chunks
    flash_t, flash = program(False, 0, False, True)
    assert "name=_backward" in flash and "name=_backward" not in plain  # flash_attention's own backward pass
    # Forwards no gradient goes through (here the separate critic's values) use it too: they would
    # otherwise hold every layer's whole score matrix. Nothing that only adds work there.
    fwd = flash_t.forward_options(grad=False)
    assert fwd.flash_attention and not (fwd.remat or fwd.remat_attention or fwd.mlp_chunk)
    assert flash_t.config.model.critic == "separate" and not flash_t.config.ppo.recompute_old
    # A custom_vjp call left as such (name=_flash) is one no gradient differentiated: the critic's forward.
    assert "name=_flash" in flash and "name=_flash" not in plain
    chunked = program(False, 8)[1]
    assert regions(chunked) >= 1  # each chunk's logits recomputed in the backward pass
    S, V = t.config.rollout.context_len, t.model_config.vocab_size
    whole = re.compile(rf"f32\[\d+,{S},{V}\]")  # e.g. f32[4,256,V]: an episode's logits all at once
    assert whole.search(plain) and not whole.search(chunked)


def test_rebind_runs_another_method_and_seed_on_the_same_programs():
    """A trainer rebound to another method and seed computes what a trainer built for that config
    does, without tracing its iteration again; a config that changes a program is refused."""
    from wmact_jax.config_check import prepare_config

    def config(method, seed, **fields):
        c = tiny_config()
        c.method, c.seed = method, seed
        for k, v in fields.items():
            setattr(c.ppo, k, v)
        return prepare_config(c)

    base = Trainer(config("interactive", 0), "")
    st = base.init_state(jax.random.PRNGKey(0))
    st, _ = base.iteration(st)
    rebound = base.rebind(config("wmact", 3), "")
    fresh = Trainer(config("wmact", 3), "")
    assert rebound.switches == fresh.switches and rebound.switches != base.switches
    runs = []
    for tr in (rebound, fresh):
        s = tr.init_state(jax.random.PRNGKey(3))
        for _ in range(2):
            s, m = tr.iteration(s)
        runs.append((s, jax.device_get(m)))
    (a, ma), (b, mb) = runs
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(float(a.anneal.l_max), float(b.anneal.l_max))
    # wmact anneals every iteration (tau = 1): its usage window restarts (a fixed cap's keeps counting).
    assert float(a.anneal.episode_count) == 0 and float(st.anneal.episode_count) > 0
    assert ma["l_max"] == mb["l_max"]
    assert base._iteration_jit is rebound._iteration_jit and base._iteration_jit._cache_size() == 1
    # The seed's initialisation is rebuilt (the value head is not warm-started).
    init0 = jax.tree.leaves(base._init_params)
    init3 = jax.tree.leaves(rebound._init_params)
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(init0, init3))
    with pytest.raises(ValueError, match="rebind"):
        base.rebind(config("wmact", 0, lr=3e-4))
    with pytest.raises(ValueError, match="rebind"):
        base.rebind(config("entire_plan", 0))


def test_resume_continues_identically(trainer, tmp_path):
    from wmact_jax.checkpointing import Checkpointer

    cfg = tiny_config()
    st = trainer.init_state(jax.random.PRNGKey(1))
    st, _ = trainer.iteration(st)
    ck = Checkpointer(str(tmp_path / "ckpt"), cfg, async_save=False)
    ck.save(1, st, force=True)
    ck.wait_until_finished()
    st, _ = trainer.iteration(st)
    st, _ = trainer.iteration(st)
    want = _leaves(st)

    fresh = Trainer(cfg, "")  # a new process would rebuild everything from the config
    ck2 = Checkpointer(str(tmp_path / "ckpt"), cfg, async_save=False)
    abstract = jax.eval_shape(fresh.init_state, jax.random.PRNGKey(1))
    restored = ck2.restore(abstract)
    assert int(restored.iteration) == 1
    restored, _ = fresh.iteration(restored)
    restored, _ = fresh.iteration(restored)
    for a, b in zip(want, _leaves(restored)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(st.key) if jnp.issubdtype(st.key.dtype, jax.dtypes.prng_key) else st.key),
                                  np.asarray(jax.random.key_data(restored.key) if jnp.issubdtype(restored.key.dtype, jax.dtypes.prng_key) else restored.key))


def test_evaluating_more_modes_leaves_training_unchanged(trainer):
    """experiments/run.py lets seeds evaluated in other modes join a results folder (EVALUATION_ONLY):
    an evaluation, of any mode, between iterations changes nothing the training computes."""
    plain = trainer.init_state(jax.random.PRNGKey(2))
    plain, _ = trainer.iteration(plain)
    plain, m_plain = trainer.iteration(plain)
    evaluated = trainer.init_state(jax.random.PRNGKey(2))
    for _ in range(2):
        for kwargs in (dict(greedy=True), dict(greedy=False), dict(single_turn=True), dict(initial_cap=True)):
            trainer.evaluate(evaluated, **kwargs)
        evaluated, m_evaluated = trainer.iteration(evaluated)
    for a, b in zip(_leaves(plain), _leaves(evaluated)):
        np.testing.assert_array_equal(a, b)
    assert jax.device_get(m_plain) == jax.device_get(m_evaluated)


def first_iteration(trainer=None, evaluate=False) -> dict:
    """The tiny config's first iteration from PRNGKey(0), summarised: devices, parameter sums, success,
    generated tokens, loss; with evaluate, the evaluation after it. One device when run here;
    _MESH_SCRIPT runs it on a mesh of simulated devices, test_distributed_trainer.py compares with it."""
    trainer = trainer or Trainer(tiny_config(), "")
    st, m = trainer.iteration(trainer.init_state(jax.random.PRNGKey(0)))
    out = dict(devices=jax.device_count(), sums=[float(x.astype(np.float64).sum()) for x in _leaves(st)],
               success=float(m["success_rate"]), gen=float(m["generated_tokens"]), loss=float(m["ppo/loss"]))
    if evaluate:
        out["eval"] = trainer.evaluate(st)[0]
    return out


_MESH_SCRIPT = textwrap.dedent("""
    import json
    from tests.wmact.test_train import first_iteration, tiny_config
    from wmact_jax.train import Trainer
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tp = {mesh}
    print("RESULT " + json.dumps(first_iteration(Trainer(c, ""))))
""")


def test_eight_device_mesh_matches_one_device(trainer):
    """The iteration on a (data 2, fsdp 2, tp 2) mesh of eight simulated devices (a subprocess: the device
    count is fixed when JAX starts) against one device (this process, while the subprocess compiles)."""
    proc = subprocess.Popen([sys.executable, "-c", _MESH_SCRIPT.format(mesh=(2, 2, 2))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(devices=8, PYTHONPATH=ROOT),
                            cwd=ROOT)
    try:
        one = first_iteration(trainer)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:  # the reference failed: do not leave the subprocess running
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    eight = json.loads([line for line in out.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])
    assert one["devices"] == 1 and eight["devices"] == 8
    assert one["gen"] == eight["gen"]  # the same tokens were sampled
    assert one["success"] == eight["success"]
    np.testing.assert_allclose(one["sums"], eight["sums"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-3, atol=1e-5)


def test_separate_critic_trains_its_own_model_and_transfer_evaluation_runs():
    c = tiny_config()
    c.model.critic = "separate"
    c.env.eval_names = ("Maze-7x7",)
    tr = Trainer(c, "")
    st = tr.init_state(jax.random.PRNGKey(0))
    assert set(st.ppo.params) == {"policy", "critic"}
    critic0 = [np.asarray(x) for x in jax.tree.leaves(st.ppo.params["critic"])]
    st, m = tr.iteration(st)
    m = jax.device_get(m)
    assert all(np.isfinite(v) for v in m.values())
    critic1 = [np.asarray(x) for x in jax.tree.leaves(st.ppo.params["critic"])]
    assert any(not np.array_equal(a, b) for a, b in zip(critic0, critic1))  # the critic learned
    # After a warm start the critic's trunk starts as the policy's, its own value head kept.
    synced = Trainer._critic_from_policy(st.ppo.params)
    pol, cri = synced["policy"].to_pure_dict(), synced["critic"].to_pure_dict()
    for path, x in jax.tree_util.tree_leaves_with_path(pol):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(
            functools.reduce(lambda d, k: d[k.key], path, cri)))
    np.testing.assert_array_equal(np.asarray(cri["value_head"]["kernel"]),
                                  np.asarray(st.ppo.params["critic"]["value_head"]["kernel"][...]))
    # Transfer: the same policy on a larger maze, its own prompt and a context grown to fit it.
    metrics, _ = tr.evaluate(st, env_name="Maze-7x7")
    assert 0.0 <= metrics["success_rate"] <= 1.0
    _, _, rollout, _ = tr._transfer("Maze-7x7")
    assert rollout.cfg.context_len > tr.rollout_cfg.context_len


def test_trains_from_a_pretrained_folder_and_rebinds_seeds_without_reloading(trainer, tmp_path, monkeypatch):
    """model.source=pretrained on a Hugging Face folder (here: the tiny scratch policy exported with its
    tokenizer): the run starts from exactly those weights, with a zero value head, and trains. Its
    initialisation does not depend on the seed, so a rebound trainer does not read the folder again."""
    from wmact_jax import checkpoints
    from wmact_jax.checkpoints import export_hf
    from wmact_jax.config_check import prepare_config
    from wmact_jax.models.llama import Transformer

    src = nnx.merge(trainer.graphdef, trainer._init_params["policy"])
    export_hf(tmp_path / "hf", src, tokenizer=trainer.tokenizer)
    c = tiny_config()
    c.model.source, c.model.path = "pretrained", str(tmp_path / "hf")
    tr = Trainer(prepare_config(c), "")
    got = tr._init_params["policy"].to_pure_dict()
    want = trainer._init_params["policy"].to_pure_dict()
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    st, m = tr.iteration(tr.init_state(jax.random.PRNGKey(0)))
    assert np.isfinite(float(m["ppo/loss"])) and float(m["ppo/grad_norm"]) > 0

    calls = []
    real = checkpoints.load_pretrained
    monkeypatch.setattr(checkpoints, "load_pretrained", lambda *a, **k: calls.append(a) or real(*a, **k))
    c.seed = 5
    rebound = tr.rebind(prepare_config(c), "")
    assert calls == [] and rebound._init_params is tr._init_params
    assert isinstance(nnx.merge(rebound.graphdef, rebound._init_params["policy"]), Transformer)


def test_whole_batch_forwards_run_a_minibatch_at_a_time(trainer):
    """The KL reference's and recompute_old's forwards over a batch run minibatch by minibatch (strided
    rows): the same numbers, in the batch's order, as one forward over all of it."""
    from wmact_jax import ppo as ppo_lib

    params = trainer._init_params
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 64), 0, trainer.model_config.vocab_size)
    fn = lambda tk: ppo_lib.token_logprobs_and_values(*trainer._train_apply(params, tk), tk)[:2]
    assert trainer.ppo_cfg.minibatches == 2
    got, want = jax.jit(lambda t: trainer._by_minibatch(fn, t))(tokens), jax.jit(fn)(tokens)
    for a, b in zip(got, want):
        assert a.shape == b.shape == (8, 64)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_recomputed_old_logprobs_match_the_samplers(trainer):
    """ppo.recompute_old takes the old log-probs from a training forward (a minibatch at a time) instead of
    the sampler's cached decode: on the answer tokens the two agree up to float round-off."""
    st = trainer.init_state(jax.random.PRNGKey(0))
    params = st.ppo.params
    batch = trainer.eval_batch(params, cap=3, temperature=1.0)
    prep = lambda: jax.jit(lambda b: trainer._ppo_batch(params, None, b, trainer.switches)[0])(batch)
    sampled = prep()
    trainer.config.ppo.recompute_old = True
    try:
        recomputed = prep()
    finally:
        trainer.config.ppo.recompute_old = False
    mask = np.asarray(sampled["mask"]) > 0
    assert mask.sum() > 0 and np.abs(np.asarray(sampled["logprobs"])[mask]).max() > 0.1  # real numbers
    np.testing.assert_allclose(np.asarray(recomputed["logprobs"])[mask], np.asarray(sampled["logprobs"])[mask],
                               atol=1e-4)


def test_kl_reference_and_tempered_rollout_train_the_policy_they_describe():
    """Two options of the PPO loss, on one trainer (one compile):

    `rollout.temperature` 0.5: the training rollout records the tempered log-probs (evaluation keeps the
    raw ones) and PPO computes its ratio under the same temperature, so one epoch of one minibatch starts
    from a ratio of 1 (the KL term below does not enter the ratio).

    `ppo.kl_coef > 0` keeps a frozen copy of the starting policy: an iteration runs from a state whose
    params are committed (as after the warm start: the reference once shared the policy's buffers, and
    donating them twice failed), the reference stays where it started and the policy moves."""
    c = tiny_config()
    c.rollout.temperature = 0.5
    c.ppo.minibatches, c.ppo.epochs = 1, 1
    c.ppo.kl_coef = 0.1
    tr = Trainer(c, "")
    assert tr.rollout_cfg.sampled_logprobs and not tr.eval_cfg.sampled_logprobs and tr.ppo_cfg.temperature == 0.5
    st, m = tr.iteration(tr.init_state(jax.random.PRNGKey(0)))
    m = jax.device_get(m)
    assert abs(float(m["ppo/ratio_mean"]) - 1.0) < 1e-4 and abs(float(m["ppo/approx_kl"])) < 1e-5
    st = tr.with_params(st, st.ppo.params)  # committed params, as `Trainer.warmstart` hands them over
    ref0 = [np.asarray(x) for x in jax.tree.leaves(st.ref_params)]
    st, m = tr.iteration(st)
    assert abs(float(m["ppo/kl_ref"])) < 1e-6  # one minibatch: measured before the update, at the reference
    st, m = tr.iteration(st)
    assert np.isfinite(float(m["ppo/kl_ref"])) and float(m["ppo/kl_ref"]) > 0.0  # the policy has moved
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(ref0, jax.tree.leaves(st.ref_params)))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(ref0, jax.tree.leaves(st.ppo.params["policy"])))
