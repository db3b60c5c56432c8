"""The full configuration of a WMAct training run; every preset starts from `get_config()`.

Every field is overridable on the command line, e.g.
`python -m wmact_jax.main --config=configs/base.py --config.ppo.lr=1e-4 --config.env.name=Maze-7x7`.
`wmact_jax.config_check.check_config` rejects unknown fields and bad values before any work starts.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # What is trained, on what.
    c.method = "wmact"  # entire_plan | interactive | rescale | anneal | wmact | step_penalty
    c.seed = 0

    c.env = ml_collections.ConfigDict()
    c.env.name = "Sokoban-6x6-1"
    c.env.max_steps = 100  # environment step limit of one episode (all turns together)
    c.env.eval_names = ()  # extra environments evaluated for transfer (e.g. ("Maze-9x9",))

    c.model = ml_collections.ConfigDict()
    c.model.source = "scratch"  # scratch | pretrained
    c.model.path = ""  # HF folder, .gguf file, or "smollm2-135m-instruct" (source=pretrained)
    c.model.hidden_size = 128
    c.model.intermediate_size = 384
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.dtype = "float32"  # float32 | bfloat16 (compute)
    # The rollout's KV cache: "" = the model's dtype. "bfloat16" under a float32 model halves the cache's
    # memory and runs the attention products over it in bfloat16 (float32 accumulation); the sampler's
    # log-probs then differ from the training forward's by bfloat16 round-off (ppo.recompute_old=True
    # takes the old log-probs from a forward pass instead). On XLA:CPU it decodes slower than float32
    # (README, "A bfloat16 KV cache"): a memory option, not a CPU speed one.
    c.model.kv_cache_dtype = ""
    # separate: a critic model of its own, its trunk starting as the (warm-started) policy's; shared: a value
    # head on the policy's trunk, its loss training the trunk too; head: that head on a stop-gradient of the
    # trunk (the critic cannot move the policy). Measured on the default run (README): trained alone, the
    # shared critic's loss took the policy from 62% to 16% training success in 8 iterations; the separate critic
    # reached an explained variance of 0.35-0.49 within 30 iterations, the shared and head ones stayed near 0.
    c.model.critic = "separate"
    # Rematerialise each decoder layer in the backward pass of the PPO update and the warm start
    # (jax.checkpoint): the same gradients, far less activation memory (the attention weights of every
    # layer are no longer kept), for more compute. For long contexts or big batches on an accelerator;
    # benchmarks/train_memory.py prints both sides.
    c.model.remat = False
    # > 0: the training losses (PPO, warm start) compute the logits this many positions at a time from the
    # last hidden state, each chunk recomputed in the backward pass, never the whole [batch, tokens, vocab]
    # (a large vocabulary's: SmolLM2's 49152). 0: all at once (the scratch model's small vocabulary).
    c.model.logits_chunk = 0
    # The training losses apply the LM head only where they read it: the PPO update at the model's tokens
    # (at most turns x max_turn_tokens of an episode), the warm start at the answer tokens (and the
    # feedback's with warmstart.state_loss), not at every position of [batch, tokens, vocab]. The same
    # numbers up to float round-off; what it saves: benchmarks/trained_logits.py (~11% of a warm start step and of a
    # full-width update of the scratch model).
    c.model.trained_logits_only = True
    # The training forwards' causal attention by query blocks in a rematerialised loop: one block's scores
    # [batch x heads, 128, tokens] alive at a time in the backward pass instead of a whole layer's, for up
    # to 2x the attention's FLOPs (every block attends to all keys under its mask).
    c.model.remat_attention = False
    # The training forwards' causal attention with an online softmax and its own backward pass
    # (FlashAttention-2's algorithm in plain JAX, wmact_jax/models/flash_attention.py): one 128 x 128 tile of
    # scores alive at a time and only the causal triangle's FLOPs. Not with remat_attention (pick one).
    c.model.flash_attention = False
    # > 0: the training forwards run each layer's MLP this many token positions at a time, each chunk
    # rematerialised: one chunk's [positions, intermediate] activations alive in the backward pass instead
    # of a layer's [batch, tokens, intermediate], for one more MLP forward. 0: the whole layer at once.
    c.model.mlp_chunk = 0

    # One multi-turn episode: what the model may write and how long it may go on.
    c.rollout = ml_collections.ConfigDict()
    c.rollout.levels_per_iteration = 16  # distinct levels per iteration
    c.rollout.group_size = 4  # rollouts per level (group statistics, GRPO)
    c.rollout.max_turn_tokens = 48  # tokens the model may write per turn
    c.rollout.max_actions_per_turn = 6  # K: actions parsed from one answer
    c.rollout.max_actions = 40  # action cap of an episode
    c.rollout.context_len = 1024  # token budget of an episode (prompt + all turns)
    c.rollout.system_prompt = "full"  # full (rules in prose) | compact (legend and format) | minimal (name, budget)
    # The prompt's fixed head (template + system prompt) is prefilled once per rollout at batch 1 and its KV cache
    # copied to every episode (as a prefix cache would), and the PPO update's forwards run it once per
    # minibatch; False runs it through the model for every episode (the same numbers up to float round-off).
    c.rollout.share_prompt_head = True
    c.rollout.turns_left = False  # each user message states the turns left ("Turns left: n"), the annealed cap included
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0  # 0 = off
    c.rollout.top_p = 1.0

    # WMAct mechanisms (set from `method` unless overridden explicitly).
    c.reward = ml_collections.ConfigDict()
    c.reward.outcome = "success"  # success | env_return
    c.reward.rescale = True  # R * N_eff / N
    c.reward.format_penalty = 0.1  # per malformed answer
    c.reward.step_penalty = 0.0  # flat penalty (the "step penalty instead of annealing" ablation)
    c.reward.step_penalty_unit = "turn"  # turn | action
    # Per turn that leaves the environment in a state the episode was in before (not in the paper; 0: off).
    c.reward.revisit_penalty = 0.0
    c.reward.placement = "turn"  # turn (at each turn's last token) | episode

    c.anneal = ml_collections.ConfigDict()
    c.anneal.kind = "wmact"  # wmact | fixed | linear
    c.anneal.l0 = 8  # starting turn cap L_max (the paper: 30)
    c.anneal.tau = 10  # iterations between updates (the paper: 100)
    c.anneal.floor = 1
    c.anneal.rounding = "ceil"  # ceil | round | floor
    c.anneal.final = 1  # linear schedule: final cap
    c.anneal.linear_iterations = 100

    c.ppo = ml_collections.ConfigDict()
    c.ppo.lr = 1e-4
    # Learning rate of the critic's parameters (critic model / value head); 0 = ppo.lr. A zero-initialised value
    # head barely moves at a policy's 1e-4 (its outputs stayed near 0 over 80 Adam steps, measured).
    c.ppo.critic_lr = 1e-3
    c.ppo.warmup_steps = 0
    c.ppo.schedule = "constant"  # constant | cosine
    c.ppo.gamma = 1.0
    c.ppo.lam = 0.95
    c.ppo.clip_low = 0.2
    c.ppo.clip_high = 0.28
    c.ppo.value_clip = 0.2
    c.ppo.vf_coef = 0.5
    c.ppo.ent_coef = 0.0
    c.ppo.kl_coef = 0.0  # KL to the frozen starting policy (0 = no reference model)
    c.ppo.epochs = 2
    c.ppo.minibatches = 4
    c.ppo.max_grad_norm = 1.0
    c.ppo.advantage = "gae"  # gae | grpo
    c.ppo.normalise_advantages = True
    # Old log-probs/values: False = the sampler's (cached decoding, free), True = one extra forward pass.
    c.ppo.recompute_old = False
    # Train on tokens[:, :W], W the smallest of 128, 256, ... context_len holding every model token
    # (the same result: trailing padding is never trained on). 0 = always context_len.
    c.ppo.width_bucket = 128

    # Supervised warm start on oracle demonstrations (a scratch model cannot explore from nothing).
    c.warmstart = ml_collections.ConfigDict()
    c.warmstart.enabled = True
    c.warmstart.steps = 300
    c.warmstart.batch_size = 32
    c.warmstart.lr = 1e-3
    c.warmstart.num_levels = 2000
    c.warmstart.plan_fraction = 0.5  # share of demos that give several actions per turn (the rest: one)
    c.warmstart.plan_actions = 0  # most actions per multi-action demo turn (0 = rollout.max_actions_per_turn)
    # Share of the mixed phase's batches drawn from the one-action demos (and their windows); the rest from
    # the multi-action and one-turn ones. < 0: all demos pooled, in proportion to their answer tokens.
    c.warmstart.mixed_one_action_share = -1.0
    # With rollout.turns_left: multi-action demos draw their stated cap from 1..anneal.l0 and write the whole
    # rest of the plan when one turn is left (else the cap is drawn from [turns used, l0], the play ignoring it).
    c.warmstart.budget_aware = False
    c.warmstart.chunk = "plan"  # plan (the whole remaining plan, <= K actions, per turn) | random (1..K)
    c.warmstart.keep_unsolved = True  # keep one-action demos the turn cap cut short (their moves are optimal)
    c.warmstart.windows = True  # also every later turn of a demo alone, as a one-grid first turn
    c.warmstart.curriculum = 0.4  # share of the steps first spent on one-action play only (0 = mixed from the start)
    # > 0: the one-action phase goes on past its share of the steps until its answer loss (mean of the last
    # 50 steps) is below curriculum_exit x its chance level (a model that does not read the state), for at
    # most curriculum_max_steps steps; the rest of the steps follow. How long a scratch model takes to leave
    # that plateau depends on the puzzle (Maze-5x5: 150-250 steps; Maze-7x7: about 400; measured).
    c.warmstart.curriculum_exit = 0.0
    # Seed of the demos and their batch order (and, in the warm-start command and the experiment runner, of
    # the fresh model's initial parameters); -1 = the run's `seed`. The runner's warm-start replicates.
    c.warmstart.seed = -1
    c.warmstart.curriculum_max_steps = 1500
    # > 0: while the answer loss (mean of the last 50 steps) is above target_loss at the end of the steps,
    # another `steps` mixed steps follow with a fresh optimizer and the schedule restarted, up to max_cycles
    # cycles in all. The outcome of a fixed step count depends on the draw (Taxi: a second stage of the same
    # recipe ended at 0.09 or 0.38 answer loss, 87.5% or 4.2% greedy success, float round-off apart).
    c.warmstart.target_loss = 0.0
    c.warmstart.max_cycles = 1
    c.warmstart.noise = 0.2  # share of demo turns with a deliberately suboptimal action
    # Share of demo turns preceded by a blocked move (no effect) that the demo then corrects; the blocked
    # answer is context, not a target. Greedy failures of warm-started policies repeat one blocked move.
    c.warmstart.recover = 0.0
    # Weight of a world-model loss on the environment's feedback (reward line and next state) after each
    # demo answer. Off by default: at 0.5 it kept the scratch model on its plateau (answer loss 0.280
    # after 300 one-action steps on Maze-5x5, against 0.253 without it; measured, see README).
    c.warmstart.state_loss = 0.0
    c.warmstart.single_turn_fraction = 0.0  # share of demos in the one-turn whole-plan (entire_plan) format
    c.warmstart.length_bucket = 128  # demos are batched by length, in widths of this multiple (0 = one width)
    c.warmstart.path = ""  # start from this warm-started policy (`python -m wmact_jax.warmstart` output)
    # The warm start itself trains from this saved warm start's policy instead of a fresh model: it
    # extends one (e.g. `warmstart.curriculum=0` for more steps on the mixed phase alone).
    c.warmstart.init = ""

    c.train = ml_collections.ConfigDict()
    c.train.iterations = 60
    c.train.log_every = 1
    c.train.eval_every = 20
    c.train.eval_levels = 64
    c.train.checkpoint_every = 20
    c.train.keep_checkpoints = 3
    c.train.transcripts = 3  # readable transcripts written at each evaluation
    # Evaluation modes: greedy and sampled at the current turn cap, greedy with a one-turn cap, greedy
    # at the starting cap L_0 (greedy_l0: comparable before and after annealing).
    c.train.eval_modes = ("greedy", "sampled", "single_turn", "greedy_l0")
    c.train.eval_before = True  # evaluate before RL too (the "before" column of summary.md)
    # > 0: also evaluate the policy before RL and at the end, in every mode, on this many held-out levels
    # (the first eval_levels of them are the run's own) into eval_<N>.json: 48 levels give one run's success
    # rate a 95% interval of about +-10 points, too wide to tell methods 5 points apart.
    c.train.final_eval_levels = 0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tp = 1

    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = False  # call jax.distributed.initialize()
    c.distributed.coordinator = ""  # host:port ("" = from the environment / TPU metadata)
    c.distributed.num_processes = 0  # 0 = from the environment
    c.distributed.process_id = -1  # -1 = from the environment
    return c
