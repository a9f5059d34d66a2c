r"""Rule 110 with sleep consolidation (paper sec. 5.1, Fig. 2).

Each sequence holds four random 24-bit automaton states (one per window of L = 24 tokens, so
each state is evicted from attention before the labels arrive) followed by 4 label tokens:
label i is the first bit of state i after `task.steps` (t) Rule 110 steps. The model has to
carry every state across the window boundary in its fast weights; `sleep.passes` (N) is the
number of offline passes each window gets before eviction.

CPU smoke run (200 steps, 5 min of CPU on 2 cores, README "Run it"; eval/token_accuracy
1.0 from step 100):

  python -m sleep_lm.main --config=experiments/rule110.py:smoke --workdir=/tmp/rule110 \
      --config.task.steps=0 --config.sleep.passes=2

The paper's setting (no argument; width 256, batch 512, t = 32, N = 1; needs an accelerator):

  python -m sleep_lm.main --config=experiments/rule110.py --workdir=/tmp/rule110_paper \
      --config.sleep.passes=2

The argument is a comma-separated list of presets and overrides, parsed by
`sleep_lm.config.parse_arg`: `smoke`, `steps=T` (task.steps), `passes=N` (sleep.passes), e.g.
`--config=experiments/rule110.py:smoke,steps=1,passes=2`. Any field can also be set with
`--config.<field>=value`.
"""

from ml_collections import config_dict

from sleep_lm.config import (
    default_compile_config,
    default_init_config,
    default_mesh_config,
    parse_arg,
)

# Presets and overrides accepted in the argument, with their default values.
_ARG_DEFAULTS = {
    "smoke": False,
    "repro2a": False,
    "repro2b": False,
    "repro2b5m": False,
    "steps": -1,
    "passes": -1,
}
# Laptop-scale reproductions (results/README.md): the smoke model, eval every 25 steps.
REPRO2A_STEPS = 250  # Fig. 2a analogue: N = 1, t = 0..4
REPRO2B_STEPS = 200  # Fig. 2b analogue: t = REPRO2B_DEPTH, N = 1, 2, 4, 3 seeds each
REPRO2B_DEPTH = 2
# Fig. 2b where N = 1 is at chance (results/README.md): 800 steps x 64 x 100 = 5.1M tokens, at
# the smallest depth where N = 1 stays within 1.5x chance for the whole budget (set with
# steps=T; results/calibrate_2b.sh finds it).
REPRO2B5M_STEPS = 800


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    arg = parse_arg(arg, **_ARG_DEFAULTS)
    config = config_dict.ConfigDict()
    config.seed = 0

    config.task = config_dict.ConfigDict()
    config.task.name = "rule110"
    # t: automaton steps between the states and their labels. The paper's sleep comparison
    # (Fig. 2b) uses t = 32; Fig. 2a sweeps t in {4, ..., 16} at N = 1.
    config.task.steps = 32
    # Extra depths to evaluate at (metrics eval/accuracy@t=T), e.g. (8, 16); () = none.
    config.task.eval_steps = ()

    config.model = config_dict.ConfigDict()
    # "hybrid" (the fields below) or a pretrained family ("qwen2", "ouro") whose architecture
    # and weights come from config.init.from_hf (README "Pretrained models").
    config.model.family = "hybrid"
    config.model.width = 256
    config.model.heads = 4
    config.model.layers = "attn,gdn,attn,gdn"
    config.model.mlp_ratio = 4
    config.model.rule = "delta"  # Gated DeltaNet; "linear" = the eq. 3 gated Hebbian rule.
    config.model.conv_size = 4
    # GDN keys carry no position, so a label must find "its" state by a global position code.
    config.model.positions = "learned"
    config.model.gdn_impl = "chunked"
    config.model.chunk_size = 64
    # Matmul precision inside the GDN op: "highest" = full float32 on every backend;
    # "default" is faster on GPU (TF32) and TPU (bfloat16) and the same on CPU.
    config.model.gdn_precision = "highest"
    config.model.dtype = "float32"
    # How the same model is computed (model/config.py's ComputeConfig; README "Configuration"):
    # per-layer rematerialisation in the backward and the attention kernel ("auto": Pallas
    # splash on TPUs, query chunks when a window spans more than one chunk, else dense).
    config.model.remat_policy = "none"
    config.model.attention_impl = "auto"
    config.model.attention_chunk = 512

    config.sleep = config_dict.ConfigDict()
    config.sleep.passes = 1  # N; N = 1 is the plain hybrid with hard eviction.
    config.sleep.window = 24  # L: one automaton state per window.
    config.sleep.eviction = "hard"
    config.sleep.remat = "none"
    config.sleep.loop_blocks = "all"
    # Truncated gradients (0 = all, full BPTT): only the last M passes of each sleep window,
    # only the last K windows (benchmarks/RESULTS.md measures what they cost and save).
    config.sleep.grad_passes = 0
    config.sleep.grad_windows = 0

    config.train = config_dict.ConfigDict()
    # ~5B tokens at batch 512 x 100 tokens (Fig. 2b).
    config.train.steps = 100_000
    config.train.batch_size = 512
    config.train.optimizer = "muon"  # Muon for weight matrices + AdamW for the rest.
    config.train.lr = 2e-3  # Muon (paper: tuned at N = 1, reused for all N).
    config.train.adam_lr = 5e-5  # AdamW group (paper: fixed).
    # Regexes (comma-separated, searched in "/"-joined lower-case parameter paths) that go to
    # AdamW even when 2-D: embeddings, output head, norms, biases, the GDN convolution, and
    # the gates (forget a_proj/a_log/dt_bias, input b_proj, output o_gate_proj / Jet g_proj,
    # Ouro's early_exit_gate); a SwiGLU MLP's gate_proj is a weight matrix (Muon).
    config.train.adam_patterns = (
        "embed,lm_head,norm,bias,conv,o_gate,exit_gate,a_log,dt_bias,(^|/)a_proj/,(^|/)b_proj/,"
        "(^|/)g_proj/"
    )
    config.train.schedule = "cosine"  # warm-up, then cosine to min_lr_ratio (or "constant").
    config.train.warmup_steps = 1000
    config.train.min_lr_ratio = 0.1
    # Gradient accumulation: the batch runs as this many equal slices one after another
    # (same update, one slice's activations in memory; eval steps take one slice).
    config.train.microbatches = 1
    # Memory options (train/optim.py): float32 keeps Muon's momentum / AdamW's first moment and
    # the weight matrices' gradients in float32; the GSM fine-tunes use bfloat16 / compute.
    config.train.momentum_dtype = "float32"
    config.train.weight_grads = "float32"
    config.train.xla_options = ""  # "name=value,...": XLA options of the steps' compiles
    config.train.grad_clip = 1.0  # global norm; 0 disables.
    config.train.weight_decay = 0.0  # decoupled, Muon group only.
    config.train.log_every = 100
    config.train.eval_every = 1000
    config.train.eval_size = 2048
    # The held-out sets' seed: fixed, so every `seed` of a sweep is scored on the same problems
    # (-1: tie it to `seed`, as before the field existed).
    config.train.eval_seed = 0
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 3
    config.train.tensorboard = True  # event files in the workdir: tensorboard --logdir WORKDIR

    # Where a fresh run's parameters come from (README "Warm starts"): init.from_checkpoint=
    # "WORKDIR[:STEP]" (another run's parameters) or init.from_hf; "" = random from seed.
    config.init = default_init_config()

    # Devices (launch/README.md): data=-1 = data parallel over all devices; fsdp, tensor.
    config.mesh = default_mesh_config()

    # --mode=compile's target (README "Will it fit?"): e.g. v5e-32, h100-8; "" = none.
    config.compile = default_compile_config()

    repro = arg.repro2a or arg.repro2b or arg.repro2b5m
    if arg.smoke or repro:
        # CPU-minutes preset: small model and batch, few steps. Learning rates are higher than
        # the paper's because the run is ~100x shorter; global learned positions are learned by
        # the AdamW group, so it needs a usable lr too.
        config.task.steps = 1
        config.model.width = 64
        config.model.heads = 4
        config.model.chunk_size = 32
        # On CPU, recomputing each pass in the backward is faster than storing it
        # (benchmarks/RESULTS.md, width 256 batch 64: 1.10 vs 1.46 s/step at N = 1, 2.37 vs
        # 3.99 s at N = 2). Same math as remat="none".
        config.sleep.remat = "pass"
        # Measured on 2 CPU cores (~0.5 s/step, ~100 s a run), eval/token_accuracy at steps
        # 50/100/150/200, one seed: N = 2: t = 0: 1.0/1.0/1.0/1.0; t = 2:
        # 0.664/0.903/0.985/1.0 (exact 1.0). N = 1, t = 2: 0.714/0.748/0.800/0.818 (exact
        # 0.412). (t = 1 at N = 2, before the chunk-24 inverse fix: 0.934/1.0/1.0/1.0.)
        config.train.steps = 200
        config.train.batch_size = 64
        config.train.lr = 2e-2
        config.train.adam_lr = 3e-3
        config.train.warmup_steps = 20
        config.train.log_every = 10
        config.train.eval_every = 50
        config.train.eval_size = 512
        config.train.checkpoint_every = 50
    if repro:
        # The smoke model and optimiser; denser eval for the curves, fewer checkpoints.
        config.task.steps = REPRO2B_DEPTH
        config.train.steps = REPRO2A_STEPS if arg.repro2a else REPRO2B_STEPS
        if arg.repro2b5m:
            config.train.steps = REPRO2B5M_STEPS
        config.train.eval_every = 25
        config.train.checkpoint_every = 50
        config.train.keep_checkpoints = 1

    if arg.steps >= 0:
        config.task.steps = arg.steps
    if arg.passes >= 0:
        config.sleep.passes = arg.passes
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Points for `python -m sleep_lm.sweep --config=experiments/rule110.py[:smoke] ...`.

    Paper (Fig. 2b): t = 32, N in {1, 2, 3, 4}. Smoke: t in {0, 1, 2} x N in {1, 2}, a
    CPU-sized look at how accuracy depends on N as the rollout gets deeper.

    Laptop-scale reproductions (smoke model; results/run_all.sh runs them and the reports):

      # Fig. 2a analogue: N = 1, t = 0..4, accuracy vs training tokens (REPRO2A_STEPS steps)
      python -m sleep_lm.sweep --config=experiments/rule110.py:repro2a --workdir=results/repro2a
      # Fig. 2b analogue: t = REPRO2B_DEPTH, N = 1, 2, 4, seeds 0, 1, 2 (REPRO2B_STEPS steps)
      python -m sleep_lm.sweep --config=experiments/rule110.py:repro2b --workdir=results/repro2b
      python -m sleep_lm.report results/repro2b --out results/repro2b/report
      # Fig. 2b where N = 1 stays at chance: 5.1M tokens at depth T (results/calibrate_2b.sh)
      python -m sleep_lm.sweep --config=experiments/rule110.py:repro2b5m,steps=T \
          --workdir=results/repro2b5m
    """
    arg = parse_arg(arg, **_ARG_DEFAULTS)
    if arg.repro2a:
        return [{"task.steps": t} for t in (0, 1, 2, 3, 4)]
    if arg.repro2b:
        return [{"sleep.passes": n, "seed": s} for n in (1, 2, 4) for s in (0, 1, 2)]
    if arg.repro2b5m:
        # Seed-major, so that a budget cut short still leaves whole seeds to compare.
        return [{"sleep.passes": n, "seed": s} for s in (0, 1, 2) for n in (1, 2, 4)]
    if arg.smoke:
        return [{"task.steps": t, "sleep.passes": n} for t in (0, 1, 2) for n in (1, 2)]
    return [{"task.steps": 32, "sleep.passes": n} for n in (1, 2, 3, 4)]
