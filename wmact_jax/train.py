"""WMAct training: one jitted iteration = multi-turn rollouts, rewards, PPO update, annealing.

`Trainer(config, workdir)` builds everything from an `ml_collections` config (see configs/base.py):
the environment, the tokenizer and policy (a small model from scratch or a pretrained checkpoint),
the in-graph conversation codecs, the rollout program, the PPO update. The host only loops over
iterations (wmact_jax/main.py), logs, evaluates and checkpoints; inside `iteration` nothing leaves
the device.

    rollout (turn cap from the annealing state, traced)
      -> old log-probs and values by one forward pass over the episode tokens
      -> episode reward: outcome x N_eff/N (rescaling), format / step penalties, placed on tokens
      -> PPO (GAE or GRPO advantages), epochs x minibatches as lax.scan
      -> annealing: L_max <- (mean turns + L_max)/2 every tau iterations
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

import envs_jax
from wmact_jax import annealing as anneal_lib
from wmact_jax import ppo as ppo_lib
from wmact_jax import rewards as rewards_lib
from wmact_jax.conversation import Conversation
from wmact_jax.models import ForwardOptions, ModelConfig, Transformer
from wmact_jax.models.kv_cache import KVCache
from wmact_jax.models.llama import apply as model_apply
from wmact_jax.models.llama import layer_weights as model_layer_weights
from wmact_jax.rollout import END_REASONS, Rollout, RolloutConfig, rollout_metrics
from wmact_jax.sampler import SamplingParams


@struct.dataclass
class TrainState:
    ppo: ppo_lib.TrainState  # params ({'policy'} or {'policy', 'critic'}), optimizer state, step
    ref_params: Any  # frozen starting policy for the KL term (None when kl_coef == 0)
    anneal: anneal_lib.AnnealState
    key: jax.Array
    iteration: jax.Array  # int32


class Trainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str = ""):
        self.config = config
        self.workdir = workdir
        c = config
        # ---- environment
        self.env, self.env_params = envs_jax.make(c.env.name, max_steps=c.env.max_steps)
        # ---- tokenizer and policy
        self.tokenizer, self.model_config, init_params = self._build_model(c)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        # ---- conversation codecs
        from wmact_jax.codec import AnswerCodec, GridCodec

        single_turn = c.method == "entire_plan"
        K = c.rollout.max_actions_per_turn
        self.grid_codec = GridCodec.build(self.env, self.tokenizer)
        self.answer_codec = AnswerCodec.build(self.env, self.tokenizer, max_actions=K)
        self.conv = self.conversation(self.env, self.grid_codec, K, single_turn)
        # Every episode's tokens begin with the conversation's prompt head: with rollout.share_prompt_head the
        # rollout prefills it once and the update's forwards (policy, critic, reference) run it once per batch.
        self.shared_head = len(self.conv.prompt_head) if c.rollout.share_prompt_head else 0
        stop = self.tokenizer.convert_tokens_to_ids("</answer>")
        stop_ids = [stop] if isinstance(stop, int) and stop != self.tokenizer.unk_token_id else []
        self.eos_id = self.tokenizer.eos_token_id
        # ---- static shapes
        self.max_turns = 1 if single_turn else int(math.ceil(c.anneal.l0))
        self.rollout_cfg = RolloutConfig(
            num_levels=c.rollout.levels_per_iteration, group_size=c.rollout.group_size,
            max_turns=self.max_turns, max_turn_tokens=c.rollout.max_turn_tokens, max_actions_per_turn=K,
            max_actions=c.rollout.max_actions, context_len=c.rollout.context_len,
            share_prompt_head=bool(c.rollout.share_prompt_head),
            sampled_logprobs=float(c.rollout.temperature) != 1.0)
        self.eval_cfg = dataclasses.replace(self.rollout_cfg, num_levels=c.train.eval_levels, group_size=1,
                                            sampled_logprobs=False)
        mc = self.model_config
        cache_dtype = c.model.kv_cache_dtype or None
        init_cache = self._init_cache = lambda b, s: KVCache.init(mc, b, s, cache_dtype)
        # ---- devices: params placed by their logical axes, episodes split over ('data', 'fsdp')
        self.mesh, shard_batch = None, None
        if jax.device_count() > 1:
            from wmact_jax.models import sharding

            self.mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tp)
            init_params = self._place(init_params)
            shard_batch = functools.partial(_constrain_batch, self.mesh)
        self.rollout = Rollout(self.env, self.env_params, self.conv, self.answer_codec, self._policy_apply,
                               self.rollout_cfg, init_cache, stop_ids, self.eos_id, self.pad_id, shard_batch,
                               self._policy_prepare)
        self.eval_rollout = Rollout(self.env, self.env_params, self.conv, self.answer_codec, self._policy_apply,
                                    self.eval_cfg, init_cache, stop_ids, self.eos_id, self.pad_id, shard_batch,
                                    self._policy_prepare)
        self._init_params = init_params
        # ---- RL pieces
        self._set_method(c)
        rc = self.rollout_cfg
        self.ppo_cfg = ppo_lib.PPOConfig(
            gamma=float(c.ppo.gamma), lam=float(c.ppo.lam), clip_low=float(c.ppo.clip_low),
            clip_high=float(c.ppo.clip_high), value_clip=float(c.ppo.value_clip) if c.ppo.value_clip > 0 else None,
            vf_coef=float(c.ppo.vf_coef), ent_coef=float(c.ppo.ent_coef), kl_coef=float(c.ppo.kl_coef),
            temperature=float(c.rollout.temperature),
            epochs=int(c.ppo.epochs), minibatches=int(c.ppo.minibatches), max_grad_norm=float(c.ppo.max_grad_norm),
            advantage=c.ppo.advantage, normalise_advantages=bool(c.ppo.normalise_advantages),
            width_buckets=(ppo_lib.width_buckets(c.rollout.context_len, int(c.ppo.width_bucket))
                           if int(c.ppo.width_bucket) > 0 else ()),
            # The model writes at most max_turn_tokens in each of max_turns turns (the rollout's loss_mask).
            max_trained=(min(rc.context_len, rc.max_turns * rc.max_turn_tokens) if c.model.trained_logits_only else 0))
        # The critic always has its own Adam (one optimizer-state structure whatever ppo.critic_lr is).
        critic_lr = float(c.ppo.critic_lr) if float(c.ppo.critic_lr) > 0 else float(c.ppo.lr)
        self.optimizer = ppo_lib.make_optimizer(self._schedule(c, c.ppo.lr), max_grad_norm=c.ppo.max_grad_norm,
                                                critic_learning_rate=self._schedule(c, critic_lr))
        self.sampling = SamplingParams(temperature=jnp.float32(c.rollout.temperature),
                                       top_k=jnp.int32(c.rollout.top_k), top_p=jnp.float32(c.rollout.top_p))
        self._update = ppo_lib.make_update(self.ppo_cfg, self._train_apply, self.optimizer)
        self._iteration_jit = jax.jit(self._iteration, donate_argnums=0)  # (state, switches)
        self._eval_jit = self._eval_run(self.eval_rollout)
        self._eval_levels_cache: Dict[Tuple[str, int], Any] = {}
        self._transfer_cache: Dict[str, Any] = {}

    def _set_method(self, c):
        """The reward and annealing settings of `c`, and the traced switches that carry its method.

        The method's switches are arguments of the jitted iteration, not constants folded into it: the
        multi-turn methods (interactive, rescale, anneal, wmact, step_penalty) then lower to one
        identical program, compiled once by a suite's persistent compilation cache instead of once per
        method (and run by one Trainer, `rebind`). A fixed cap is WMAct annealing that never updates;
        a zero step penalty has no unit (the program uses 'turn', the unit of the paper's ablation).
        """
        single_turn = c.method == "entire_plan"
        self.reward_cfg = rewards_lib.RewardConfig(
            outcome=c.reward.outcome, rescale=bool(c.reward.rescale), format_penalty=float(c.reward.format_penalty),
            step_penalty=float(c.reward.step_penalty), step_penalty_unit=c.reward.step_penalty_unit,
            revisit_penalty=float(c.reward.revisit_penalty))
        kind = "fixed" if single_turn else c.anneal.kind
        self.anneal_cfg = anneal_lib.AnnealConfig(
            kind=kind, l0=float(self.max_turns if single_turn else c.anneal.l0), tau=int(c.anneal.tau),
            floor=float(c.anneal.floor), rounding=c.anneal.rounding, final=float(c.anneal.final),
            num_iterations=int(c.anneal.linear_iterations))
        self._anneal_program = (dataclasses.replace(self.anneal_cfg, kind="wmact")
                                if kind in ("fixed", "wmact") else self.anneal_cfg)
        self._reward_program = dataclasses.replace(
            self.reward_cfg, step_penalty_unit=c.reward.step_penalty_unit if self.reward_cfg.step_penalty else "turn")
        self.switches = {"rescale": np.bool_(self.reward_cfg.rescale),
                         "format_penalty": np.float32(self.reward_cfg.format_penalty),
                         "step_penalty": np.float32(self.reward_cfg.step_penalty),
                         "revisit_penalty": np.float32(self.reward_cfg.revisit_penalty),
                         "anneal_adaptive": np.bool_(kind == "wmact")}
        self._switches_on_device = None

    def program_key(self) -> str:
        """What this trainer's traced programs depend on: its config without the fields `rebind` may
        change (seed, method switches, warm start, logging), plus the static forms of the method."""
        import json

        from wmact_jax.config_check import flatten

        d = {k: v for k, v in flatten(self.config).items()
             if not any(k == p or k.startswith(p + ".") for p in _REBINDABLE)}
        d["_program"] = {"single_turn": self.config.method == "entire_plan", "anneal": str(self._anneal_program),
                         "reward": str(dataclasses.replace(self._reward_program, rescale=False, format_penalty=0.0,
                                                           step_penalty=0.0, revisit_penalty=0.0))}
        return json.dumps(d, sort_keys=True, default=str)

    def rebind(self, config: ml_collections.ConfigDict, workdir: str = "") -> "Trainer":
        """This trainer, with its traced and compiled programs, for another run's `config`.

        `config` (already method-resolved, as the constructor's) may differ from this trainer's only
        in its seed, its method's switches (not entire_plan against the others: other shapes), the
        warm start and logging fields; anything else is a ValueError. A suite running every multi-turn
        method and seed of one experiment then traces its iteration and evaluation once, not once per
        run (~6 s per run on the quick suite). A model from scratch is re-initialised for the new
        seed; the rest is shared (read-only).
        """
        import copy

        new = copy.copy(self)
        new.config, new.workdir = config, workdir
        new._set_method(config)
        if new.program_key() != self.program_key():
            raise ValueError("Trainer.rebind: the configs differ beyond seed, method switches, warm start and "
                             "logging fields; build a new Trainer")
        # Only a model from scratch initialises by seed; a pretrained one (its value head zero) is the
        # same for every seed, so its checkpoint is not read again.
        if int(config.seed) != int(self.config.seed) and config.model.source == "scratch":
            new._init_params = new._place(new._build_model(config)[2])
        return new

    def _place(self, params):
        """Params placed by their logical axes over the mesh (as is without one)."""
        if self.mesh is None:
            return params
        from wmact_jax.models import sharding

        return {k: sharding.shard_state(v, self.mesh) for k, v in params.items()}

    # ------------------------------------------------------------------ model
    def _build_model(self, c):
        critic_separate = c.model.critic == "separate"
        if c.model.source == "scratch":
            from wmact_jax.tokenization.scratch import build_scratch_tokenizer

            tok = build_scratch_tokenizer()
            mc = ModelConfig(
                vocab_size=len(tok), hidden_size=c.model.hidden_size, intermediate_size=c.model.intermediate_size,
                num_layers=c.model.num_layers, num_heads=c.model.num_heads, num_kv_heads=c.model.num_kv_heads,
                max_position_embeddings=max(c.rollout.context_len, 2048), tie_word_embeddings=True,
                dtype=c.model.dtype, value_head=not critic_separate,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
            graphdef, policy = nnx.split(Transformer(mc, rngs=nnx.Rngs(c.seed)))
        else:
            from wmact_jax.checkpoints import load_pretrained

            mc, model, tok = load_pretrained(c.model.path)
            if tok is None:
                raise ValueError(f"model.path={c.model.path!r} has no tokenizer; one is needed for the conversation")
            mc = dataclasses.replace(mc, value_head=not critic_separate, dtype=c.model.dtype)
            model = _with_config(model, mc)
            graphdef, policy = nnx.split(model)
        self.graphdef = graphdef
        params = {"policy": policy}
        if critic_separate:
            cc = dataclasses.replace(mc, value_head=True)
            if c.model.source == "scratch":
                cgraph, critic = nnx.split(Transformer(cc, rngs=nnx.Rngs(c.seed + 1)))
            else:
                cgraph, critic = nnx.split(_with_config(nnx.merge(graphdef, policy), cc))
            self.critic_graphdef = cgraph
            params["critic"] = critic
        return tok, mc, params

    def _policy_prepare(self, params):
        """Once per rollout (Rollout's prepare_params): (params dict, the policy's per-layer weights)."""
        return params, model_layer_weights(self.graphdef, params["policy"])

    def _policy_apply(self, prepared, tokens, cache, num_new, logits_at=None):
        """Rollout-time policy on `_policy_prepare`'s output (logits_at: see llama.apply). The sliced
        layer weights are read with a per-layer cache; with a stacked one they are unused (and dropped)."""
        params, lws = prepared
        return model_apply(self.graphdef, params["policy"], tokens, cache, num_new, logits_at=logits_at,
                           layer_weights=lws if cache.per_layer else None)

    def forward_options(self, grad: bool) -> ForwardOptions:
        """The memory options (`llama.ForwardOptions`) from model.*, for a training-shape forward: the logits
        in chunks and flash_attention always; remat, remat_attention, mlp_chunk and the LM head at the trained
        tokens only (model.trained_logits_only, the losses' LogitsHead) only where a backward pass
        follows (without one they only add work: remat_attention's blocks attend to every key, mlp_chunk
        runs chunk by chunk). A forward alone (the KL reference's, the separate critic's, recompute_old's)
        with the plain attention holds a layer's scores [rows, heads, S, S]: SmolLM2 at 32 x 4096 plans
        12.1 GB with it, 2.6 GB with flash_attention (benchmarks/train_memory.py --smollm2, `fwd` rows)."""
        m = self.config.model
        if not grad:
            return ForwardOptions(logits_chunk=m.logits_chunk, flash_attention=m.flash_attention)
        return ForwardOptions(remat=m.remat, logits_chunk=m.logits_chunk, remat_attention=m.remat_attention,
                              flash_attention=m.flash_attention, mlp_chunk=m.mlp_chunk,
                              logits_head=bool(m.trained_logits_only))

    def _train_apply(self, params, tokens, grad: bool = True):
        """(logits [M,S,V] (a LogitsHead with model.logits_chunk), values [M,S]) for PPO; the critic is the
        value head (its loss training the shared trunk, or with model.critic='head' the head alone) or its
        own model. grad=False: a forward no gradient goes through (see `forward_options`)."""
        opts = self.forward_options(grad)
        out = model_apply(self.graphdef, params["policy"], tokens, detach_value_head=self.config.model.critic == "head",
                          shared_head=self.shared_head, options=opts)
        if "critic" in params:  # its values only (with logits_chunk its logits are not even traced)
            values = model_apply(self.critic_graphdef, params["critic"], tokens, shared_head=self.shared_head,
                                 options=opts).values
        else:
            values = out.values
        return out.logits, values

    def _schedule(self, c, lr):
        lr = float(lr)
        total = max(1, int(c.train.iterations) * int(c.ppo.epochs) * int(c.ppo.minibatches))
        if c.ppo.schedule == "cosine":
            return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, int(c.ppo.warmup_steps)), total)
        if int(c.ppo.warmup_steps) > 0:
            return optax.linear_schedule(0.0, lr, int(c.ppo.warmup_steps))
        return lr

    # ------------------------------------------------------------------ state
    def init_state(self, key) -> TrainState:
        # A copy: `iteration` donates the state's buffers, the initial params must survive it.
        params = jax.tree.map(jnp.copy, self._init_params)
        ref = self._reference(params)
        return TrainState(ppo=ppo_lib.TrainState.create(params, self.optimizer), ref_params=ref,
                          anneal=anneal_lib.anneal_init(self.anneal_cfg), key=jnp.asarray(key),
                          iteration=jnp.zeros((), jnp.int32))

    def with_params(self, state: TrainState, params) -> TrainState:
        """A state whose policy (and reference) start from `params` (e.g. after the warm start)."""
        return state.replace(ppo=ppo_lib.TrainState.create(params, self.optimizer), ref_params=self._reference(params))

    def _reference(self, params):
        """The frozen starting policy of the KL term (None without one): its own buffers, since
        `iteration` donates the state and one buffer may not be donated twice (policy and reference)."""
        return jax.tree.map(jnp.copy, params["policy"]) if self.ppo_cfg.kl_coef > 0 else None

    def _committed(self, tree):
        """Every array of `tree` (a state, or its params) committed to its device(s), as `iteration`'s
        outputs are; what the jitted entry points (`iteration`, `evaluate`) are called with.

        Why: jit keys its compiled programs on the arguments' placement, committed or not, so a state
        holding freshly created (uncommitted) arrays compiled `iteration` a second time on its second
        call (measured on the default run: 37 s, then 31 s again, where a cached call takes 3-7 s), and
        the evaluation a second time after training (the initial evaluation saw the fresh params). Arrays
        already committed (the params sharded over a mesh) keep their placement; the rest go to the one
        device, or replicated over the mesh.
        """
        if self.mesh is None:
            target = jax.local_devices()[0]
        else:
            from jax.sharding import NamedSharding, PartitionSpec

            target = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda x: jax.device_put(x, target) if _uncommitted(x) else x, tree)

    def turn_cap(self, state: TrainState) -> int:
        return int(anneal_lib.current_cap(self.anneal_cfg, state.anneal))

    # ------------------------------------------------------------------ one iteration (jitted)
    def device_switches(self):
        """`self.switches` as the committed device scalars the jitted iteration takes (made once per method)."""
        if self._switches_on_device is None:
            self._switches_on_device = self._committed(jax.tree.map(jnp.asarray, self.switches))
        return self._switches_on_device

    def iteration(self, state: TrainState):
        """One training iteration, jitted (the state's buffers are donated) -> (new state, metrics)."""
        return self._iteration_jit(self._committed(state), self.device_switches())

    def _iteration(self, state: TrainState, switches):
        """switches: `self.switches` as traced scalars (the method)."""
        key, k_roll, k_upd = jax.random.split(state.key, 3)
        cap = jnp.minimum(anneal_lib.current_cap(self.anneal_cfg, state.anneal), self.max_turns)
        params = state.ppo.params
        batch, _ = self.rollout.run(params, k_roll, cap, self.sampling)
        data, reward_parts = self._ppo_batch(params, state.ref_params, batch, switches)
        ppo_state, upd = self._update(state.ppo, data, k_upd)
        anneal = anneal_lib.anneal_update(self._anneal_program, state.anneal, batch.turns,
                                          adaptive=switches["anneal_adaptive"])
        metrics = rollout_metrics(batch)
        metrics.update({f"ppo/{k}": v for k, v in upd.items()})
        metrics.update({f"reward/{k}": jnp.mean(v) for k, v in reward_parts.items()})
        metrics["turn_cap"] = cap.astype(jnp.float32)
        metrics["l_max"] = anneal.l_max
        new = TrainState(ppo=ppo_state, ref_params=state.ref_params, anneal=anneal, key=key,
                         iteration=state.iteration + 1)
        return new, metrics

    def _ppo_batch(self, params, ref_params, b, switches):
        tokens, mask = b.tokens, b.loss_mask
        if self.config.ppo.recompute_old:
            # One forward pass over the episodes instead of the sampler's cached-path numbers.
            lp, v = self._by_minibatch(lambda tk: ppo_lib.token_logprobs_and_values(
                *self._train_apply(params, tk, grad=False), tk, self.ppo_cfg.temperature)[:2], tokens)
        else:
            lp, v = b.logprobs, b.values
            if "critic" in params:  # a separate critic was not run during the rollout
                S = tokens.shape[1]

                def critic_values(w):  # [E, S]: PPO's alignment, values[:, t] = the critic's output at t - 1
                    cv = model_apply(self.critic_graphdef, params["critic"], tokens[:, :w], shared_head=self.shared_head,
                                     options=self.forward_options(grad=False)).values  # [E, w]
                    return jnp.pad(cv[:, :-1], ((0, 0), (1, S - w)))

                v = ppo_lib.at_width_bucket(mask, self.ppo_cfg.width_buckets, critic_values) * mask
        lp, v = jax.lax.stop_gradient(lp), jax.lax.stop_gradient(v)
        rcfg = dataclasses.replace(self._reward_program, rescale=switches["rescale"],
                                   format_penalty=switches["format_penalty"], step_penalty=switches["step_penalty"],
                                   revisit_penalty=switches["revisit_penalty"])
        parts = rewards_lib.episode_rewards(
            rcfg, success=b.success, env_return=b.env_return, n_actions=b.n_actions,
            n_effective=b.n_effective, format_errors=b.format_errors, turns=b.turns,
            revisits=jnp.sum(b.turn_revisit, axis=1))
        if self.config.reward.placement == "turn":
            # Penalties at the turn that earned them, the (rescaled) outcome at the episode's end.
            L = b.turn_valid.shape[1]
            took = jnp.arange(L)[None, :] < b.turns[:, None]  # [E, L]
            per_turn = (rewards_lib.format_penalty(rcfg.format_penalty, took & ~b.turn_valid)
                        + rewards_lib.step_penalty(rcfg.step_penalty, rcfg.step_penalty_unit, b.turn_actions, took)
                        + rewards_lib.revisit_penalty(rcfg.revisit_penalty, took & b.turn_revisit))
            tok_r = rewards_lib.rewards_to_tokens(b.turn_id, mask, per_turn.astype(jnp.float32), parts["scaled"], "turn")
        else:
            tok_r = rewards_lib.rewards_to_tokens(b.turn_id, mask, None, parts["total"], "episode")
        data = dict(tokens=tokens, mask=mask, logprobs=lp, values=v, rewards=tok_r,
                    episode_rewards=parts["total"], group_ids=b.level_id)
        if ref_params is not None:
            def ref_logprobs(tk):
                ref_logits = model_apply(self.graphdef, ref_params, tk, shared_head=self.shared_head,
                                         options=self.forward_options(grad=False)).logits
                return ppo_lib.token_logprobs_and_values(ref_logits, jnp.zeros(tk.shape), tk,
                                                         self.ppo_cfg.temperature)[0]

            data["ref_logprobs"] = self._by_minibatch(ref_logprobs, tokens)
        return data, parts

    def _by_minibatch(self, fn, tokens):
        """fn(tokens [m, S]) -> arrays [m, ...], run over the batch's E episodes a minibatch (m = E /
        ppo.minibatches) at a time, in a loop: a forward pass over the whole batch (the KL reference's,
        ppo.recompute_old's) would otherwise hold activations for E rows where the update holds m
        (SmolLM2's presets: 256 rows of 4096 tokens). Minibatch k takes episodes k, k + n, k + 2n, ...,
        so a batch sharded over devices by episode keeps every device busy in every step."""
        E, n = tokens.shape[0], int(self.ppo_cfg.minibatches)
        if n <= 1 or E % n:
            return fn(tokens)
        out = jax.lax.map(fn, tokens.reshape(E // n, n, *tokens.shape[1:]).swapaxes(0, 1))  # [n, E/n, ...]
        return jax.tree.map(lambda a: a.swapaxes(0, 1).reshape(E, *a.shape[2:]), out)

    # ------------------------------------------------------------------ evaluation
    def conversation(self, env, grid_codec, max_actions_per_turn: int, single_turn: bool) -> Conversation:
        """The conversation of `env` in this run's prompt style (used for training, transfer, warm start)."""
        rc = self.config.rollout
        return Conversation(env, self.tokenizer, grid_codec, max_actions_per_turn, single_turn=single_turn,
                            style=rc.system_prompt, turns_left=bool(rc.turns_left),
                            max_turns=int(math.ceil(self.config.anneal.l0)))

    @staticmethod
    def _eval_run(rollout):
        """Jitted (params, key, cap, temperature) -> RolloutBatch of `rollout` (temperature 0 = greedy)."""
        def run(params, key, cap, temperature):
            sampling = SamplingParams(temperature=temperature, top_k=jnp.int32(0), top_p=jnp.float32(1.0))
            return rollout.run(params, key, cap, sampling)[0]

        return jax.jit(run)

    def eval_key(self, env_seed: int = 0):
        """Held-out levels: a key stream disjoint from training's (which derives from config.seed)."""
        return jax.random.PRNGKey(10_000_019 + env_seed)

    def _transfer(self, name: str):
        """(env, env_params, Rollout, jitted run) for evaluating on another environment (transfer).

        Same tokenizer, policy and answer format; the conversation is rebuilt for the new grid, and the
        context budget grows with its prompt (a larger grid means longer states every turn).
        """
        if name not in self._transfer_cache:
            from wmact_jax.codec import AnswerCodec, GridCodec

            c = self.config
            env, ep = envs_jax.make(name, max_steps=c.env.max_steps)
            if env.num_actions != self.env.num_actions or list(env.action_names) != list(self.env.action_names):
                raise ValueError(f"env.eval_names: {name!r} has actions {list(env.action_names)}, the policy was "
                                 f"trained on {list(self.env.action_names)} ({c.env.name})")
            K = c.rollout.max_actions_per_turn
            conv = self.conversation(env, GridCodec.build(env, self.tokenizer), K, c.method == "entire_plan")
            grow = conv.max_prompt_len / max(1, self.conv.max_prompt_len)
            ctx = int(math.ceil(c.rollout.context_len * max(1.0, grow) / 64) * 64)
            cfg = dataclasses.replace(self.eval_cfg, context_len=ctx)
            rollout = Rollout(env, ep, conv, AnswerCodec.build(env, self.tokenizer, max_actions=K), self._policy_apply,
                              cfg, self._init_cache, self.rollout.stop_token_ids, self.eos_id,
                              self.pad_id, self.rollout.shard_batch, self._policy_prepare)
            self._transfer_cache[name] = (env, ep, rollout, self._eval_run(rollout))
        return self._transfer_cache[name]

    def evaluate(self, state: TrainState, num_levels: Optional[int] = None, greedy: bool = True,
                 single_turn: bool = False, transcripts: int = 0, env_name: Optional[str] = None,
                 initial_cap: bool = False):
        """Success rate, mean turns, N_eff/N and optimality gap on held-out levels.

        num_levels is fixed by config.train.eval_levels (static shapes); greedy uses temperature 0.
        single_turn evaluates with a cap of one turn; initial_cap with the starting cap L_0 whatever the
        annealing did (the same budget before and after training, so the two are comparable).
        env_name: another environment with the same actions (transfer, config.env.eval_names).
        Returns (metrics, transcripts).
        """
        m, batch, _ = self._evaluate_batch(state, greedy, single_turn, env_name, initial_cap, oracle=False)
        texts = [self.transcript(batch, i) for i in range(min(transcripts, batch.tokens.shape[0]))]
        return m, texts

    def evaluate_levels(self, state: TrainState, num_levels: Optional[int] = None, greedy: bool = True,
                        single_turn: bool = False, env_name: Optional[str] = None, initial_cap: bool = False):
        """`evaluate`'s metrics and each held-out level's episode, for paired and per-difficulty studies
        (every run is scored on the same levels, `eval_key()`'s): (metrics, {"solved", "turns", "actions",
        "effective", "format_errors", "end", "optimal"}), lists in level order; "end" the END_REASONS name,
        "optimal" the oracle's shortest solution (-1 where the environment has no oracle or the level none)."""
        m, batch, opt = self._evaluate_batch(state, greedy, single_turn, env_name, initial_cap, oracle=True)
        n = int(np.asarray(batch.success).shape[0])
        levels = {
            "solved": np.asarray(batch.success).astype(int).tolist(),
            "turns": np.asarray(batch.turns).astype(int).tolist(),
            "actions": np.asarray(batch.n_actions).astype(int).tolist(),
            "effective": np.asarray(batch.n_effective).astype(int).tolist(),
            "format_errors": np.asarray(batch.format_errors).astype(int).tolist(),
            "end": [END_REASONS[int(r)] for r in np.asarray(batch.end_reason)],
            "optimal": [-1] * n if opt is None else np.asarray(opt).astype(int).tolist(),
        }
        return m, levels

    def _evaluate_batch(self, state: TrainState, greedy: bool, single_turn: bool, env_name: Optional[str],
                        initial_cap: bool, oracle: bool):
        """(metrics, host batch, optimal lengths or None) of one evaluation mode. oracle: the levels'
        optimal lengths even when nothing was solved (else only the gap's own need)."""
        if single_turn and initial_cap:
            raise ValueError("evaluate: single_turn and initial_cap are exclusive")
        cap = 1 if single_turn else self.max_turns if initial_cap else min(self.turn_cap(state), self.max_turns)
        temp = 0.0 if greedy else float(self.config.rollout.temperature)
        key = self.eval_key()
        if env_name is None:
            env_name = self.config.env.name
        batch = self.eval_batch(state.ppo.params, cap, temp, env_name)
        env, ep, rollout, _ = self._eval_target(env_name)
        m = {k: float(v) for k, v in jax.device_get(rollout_metrics(batch)).items()}
        m["turn_cap"] = float(cap)
        opt = None
        if oracle or np.asarray(batch.success).any():
            opt = self._oracle_lengths(key, env_name, env, ep, rollout)
        gap = self._optimality_gap(batch, opt)
        if gap is not None:
            m["optimality_gap"] = gap
        return m, batch, opt

    def _eval_target(self, env_name: str):
        """(env, env_params, Rollout, jitted run) of the held-out evaluation on `env_name`."""
        if env_name == self.config.env.name:
            return self.env, self.env_params, self.eval_rollout, self._eval_jit
        return self._transfer(env_name)

    def eval_batch(self, params, cap: int, temperature: float, env_name: Optional[str] = None):
        """The held-out episodes themselves (a host RolloutBatch, `eval_key()`'s levels) played by `params`
        under turn cap `cap` at `temperature` (0 = greedy): what `evaluate` summarises, for per-level studies."""
        def to_host(x):  # multi-process: episodes span processes -> gather (a collective: all call this)
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                from jax.experimental import multihost_utils

                return multihost_utils.process_allgather(x, tiled=True)
            return jax.device_get(x)

        run = self._eval_target(env_name or self.config.env.name)[3]
        out = run(self._committed(params), self.eval_key(), jnp.int32(cap), jnp.float32(temperature))
        return jax.tree.map(to_host, out)

    @staticmethod
    def _optimality_gap(batch, opt: Optional[np.ndarray]) -> Optional[float]:
        """Mean (N - N_opt) / N_opt over solved episodes (0 = every solved level solved optimally)."""
        solved = np.asarray(batch.success)
        if not solved.any() or opt is None:
            return None
        n = np.asarray(batch.n_actions)
        ok = solved & (opt > 0)
        if not ok.any():
            return None
        return float(np.mean((n[ok] - opt[ok]) / opt[ok]))

    def _oracle_lengths(self, key, env_name, env, env_params, rollout) -> Optional[np.ndarray]:
        ck = (env_name, int(rollout.cfg.num_episodes))
        if ck not in self._eval_levels_cache:
            try:
                from envs_jax.oracles import optimal_length

                states = jax.device_get(rollout.reset_levels(jax.random.split(key)[0]))
                lens = []
                for i in range(rollout.cfg.num_episodes):
                    s = jax.tree.map(lambda x: x[i], states)
                    lens.append(optimal_length(env, s, env_params))
                self._eval_levels_cache[ck] = np.array([-1 if l is None else l for l in lens], np.float64)
            except Exception:  # an oracle failure must never stop training; the gap is then absent
                self._eval_levels_cache[ck] = None
        return self._eval_levels_cache[ck]

    def transcript(self, batch, i: int) -> str:
        """Readable text of episode i: the whole conversation + its outcome."""
        n = int(batch.length[i])
        text = self.tokenizer.decode(np.asarray(batch.tokens[i, :n]).tolist(), skip_special_tokens=False)
        return (f"=== episode {i}: success={bool(batch.success[i])} turns={int(batch.turns[i])} "
                f"N={int(batch.n_actions[i])} N_eff={int(batch.n_effective[i])} "
                f"format_errors={int(batch.format_errors[i])} end={END_REASONS[int(batch.end_reason[i])]}\n{text}\n")

    # ------------------------------------------------------------------ warm start
    def warmstart(self, state: TrainState):
        """Supervised warm start on oracle demonstrations, or the saved one at config.warmstart.path.

        -> (state, metrics)."""
        c = self.config.warmstart
        if c.path:  # a saved warm start (`python -m wmact_jax.warmstart`): every method starts from it
            from wmact_jax.warmstart import load_warmstart

            params, saved = load_warmstart(c.path, self, state.ppo.params)
            params = self._critic_from_policy(params)
            return self.with_params(state, params), {f"loaded/{k.split('/')[-1]}": v for k, v in saved.items()}
        if not c.enabled:
            return state, {}
        from wmact_jax.warmstart import run_warmstart

        params, metrics = run_warmstart(self, state.ppo.params)
        return self.with_params(state, self._critic_from_policy(params)), metrics

    @staticmethod
    def _critic_from_policy(params):
        """A separate critic's trunk set to the (warm-started) policy's weights, its value head kept: the
        critic starts out reading the puzzle as the policy does, not from random weights (a critic from
        scratch first has to learn what the warm start already taught the policy)."""
        if "critic" not in params:
            return params
        pure = jax.tree.map(jnp.copy, params["policy"].to_pure_dict())  # copies: one buffer per owner (donation)
        pure["value_head"] = params["critic"].to_pure_dict()["value_head"]
        critic = jax.tree.map(lambda x: x, params["critic"])
        nnx.replace_by_pure_dict(critic, pure)
        return {**params, "critic": critic}


# Config fields `Trainer.rebind` may change: none is read by a traced program (the method's switches
# are traced arguments; program_key keeps the static forms of the method).
_REBINDABLE = ("seed", "method", "reward.rescale", "reward.format_penalty", "reward.step_penalty",
               "reward.step_penalty_unit", "reward.revisit_penalty", "anneal.kind", "warmstart", "train.eval_before", "train.eval_every",
               "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.transcripts")


def _uncommitted(x) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed


def _constrain_batch(mesh, tree):
    """Splits the leading (episode) axis of every array over ('data', 'fsdp') when it divides."""
    from wmact_jax.models.kv_cache import KVCache as _KV
    from wmact_jax.models.sharding import batch_sharding, cache_shardings

    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if isinstance(tree, _KV):
        if tree.batch % n:
            return tree
        return jax.lax.with_sharding_constraint(tree, cache_shardings(tree, mesh))

    def one(x):
        if x.ndim == 0 or x.shape[0] % n:
            return x
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim))

    return jax.tree.map(one, tree)


def _with_config(model, mc: ModelConfig):
    """Rebuilds a pretrained model under a new config (value head / dtype), keeping its weights."""
    from wmact_jax.models.hf_names import load_model, to_hf_tensors

    return load_model(mc, to_hf_tensors(model.config, model))
