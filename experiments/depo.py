r"""Depo multi-hop retrieval with sleep consolidation (paper sec. 5.2, Fig. 3).

Each sequence is a shuffled directed cycle of at most 75 nodes written as edges
("b->a, f->l, ..."), left-padded to 300 tokens, then 10 queries "k hops after x: y". With
window L = 75 the edges fill four windows, which are evicted before the queries arrive: the
cycle must be carried in the fast weights, and following k hops needs computation that sleep
passes (N = `sleep.passes`) can do offline. Training draws k ~ U[1, 16]; evaluation is
reported per k in `task.eval_hops` (`eval/accuracy@k=8`, `eval/loss@k=8`, ...).

Model: the paper's Depo runs use Jet blocks (Jet-Nemotron's fast-weight layer: Gated DeltaNet
with a dynamic convolution on v, sleep_lm/model/jet.py), so every preset alternates attention
and `jet` layers (`model.layers`); `--config.model.layers=attn,gdn,...` selects plain GDN.

CPU smoke run (hops 1..4, a few minutes on 2 cores; a look at the pipeline, not a result):

  python -m sleep_lm.main --config=experiments/depo.py:smoke --workdir=/tmp/depo \
      --config.sleep.passes=2

The paper's setting (no argument; 10 layers, width 512, batch 128; needs an accelerator):

  python -m sleep_lm.main --config=experiments/depo.py --workdir=/tmp/depo_paper \
      --config.sleep.passes=4

Sweep N in {1, 2, 4} (`get_sweep`), then the report:

  python -m sleep_lm.sweep --config=experiments/depo.py --workdir=/tmp/depo_sweep
  python -m sleep_lm.report /tmp/depo_sweep --out /tmp/depo_sweep/report

A smaller Depo for 2 CPU cores (`learns`: repro3 with cycles of 3..6 nodes in one window,
8 queries, hops 1..4; results/README.md, "A Depo that learns"). At 600 steps every N reaches
only the "any node but x" plateau; with 12 names, GDN blocks and 3000 steps, N = 2 learns
1-hop retrieval and N = 1 does not (one seed, ~80 min per run):

  nohup bash results/run_depo_learns.sh &      # N = 1, 2, 4 at 600 steps, test-time N, report
  nohup bash results/run_depo_long.sh &        # N = 1, 2 at 3000 steps (PASSES=4 for N = 4)

The argument is a comma-separated list parsed by `sleep_lm.config.parse_arg`: `smoke`,
`repro3`, `learns`, `passes=N` (sleep.passes), and, to calibrate `learns`, the sizes
`nodes=` (task.max_nodes), `names=` (task.num_names), `queries=` (task.num_queries),
`width=` (model.width), `train_steps=` (train.steps), e.g.
`--config=experiments/depo.py:learns,nodes=12,passes=2`.
"""

from ml_collections import config_dict

from sleep_lm.config import (
    default_compile_config,
    default_init_config,
    default_mesh_config,
    parse_arg,
)

_ARG_DEFAULTS = {
    "smoke": False,
    "repro3": False,
    "learns": False,
    "passes": -1,
    # `learns` sizes (results/README.md, "A Depo that learns"); -1 = the preset's value.
    "nodes": -1,
    "names": -1,
    "queries": -1,
    "width": -1,
    "train_steps": -1,
}
REPRO3_STEPS = 400  # Fig. 3 analogue (results/README.md)
LEARNS_STEPS = 600  # "A Depo that learns" (results/README.md)


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    arg = parse_arg(arg, **_ARG_DEFAULTS)
    config = config_dict.ConfigDict()
    config.seed = 0

    config.task = config_dict.ConfigDict()
    config.task.name = "depo"
    config.task.max_nodes = 75  # cycle length n ~ U[min_nodes, max_nodes]
    config.task.min_nodes = 3
    config.task.num_queries = 10
    config.task.max_hops = 16  # training k ~ U[1, max_hops]
    config.task.eval_hops = (1, 2, 4, 8, 16)  # eval/accuracy@k=K for each

    config.model = config_dict.ConfigDict()
    # "hybrid" (the fields below) or a pretrained family ("qwen2", "ouro") whose architecture
    # and weights come from config.init.from_hf (README "Pretrained models").
    config.model.family = "hybrid"
    config.model.width = 512
    config.model.heads = 8
    # 10 layers, attention first (eq. 5); fast-weight layers are Jet blocks, as in the paper.
    config.model.layers = ",".join(["attn,jet"] * 5)
    config.model.mlp_ratio = 4
    config.model.rule = "delta"
    config.model.conv_size = 4
    config.model.positions = "learned"  # global positions: GDN / Jet keys carry none
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
    # Jet blocks: value head size = head_dim x expand_v (Jet's default 2); kernel generator
    # hidden size = heads x value head size / reduction (Jet-Nemotron's 8).
    config.model.jet_expand_v = 2.0
    config.model.jet_generator_reduction = 8

    config.sleep = config_dict.ConfigDict()
    config.sleep.passes = 1
    config.sleep.window = 75  # four windows of edges, one of queries
    config.sleep.eviction = "hard"
    config.sleep.remat = "pass"  # 10 layers x N passes x 5 windows: keep memory flat in N
    config.sleep.loop_blocks = "all"
    # Truncated gradients (0 = all, full BPTT): only the last M passes of each sleep window,
    # only the last K windows (benchmarks/RESULTS.md measures what they cost and save).
    config.sleep.grad_passes = 0
    config.sleep.grad_windows = 0

    config.train = config_dict.ConfigDict()
    config.train.steps = 50_000
    config.train.batch_size = 128
    config.train.optimizer = "muon"
    config.train.lr = 2e-3  # Muon (paper: tuned at N = 1, reused for all N)
    config.train.adam_lr = 5e-5  # AdamW group (paper: fixed)
    config.train.adam_patterns = (
        "embed,lm_head,norm,bias,conv,o_gate,exit_gate,a_log,dt_bias,(^|/)a_proj/,(^|/)b_proj/,"
        "(^|/)g_proj/"
    )
    config.train.schedule = "cosine"
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
    config.train.grad_clip = 1.0
    config.train.weight_decay = 0.0
    config.train.log_every = 100
    config.train.eval_every = 1000
    config.train.eval_size = 512
    # The held-out sets' seed: fixed, so every `seed` of a sweep is scored on the same problems
    # (-1: tie it to `seed`, as before the field existed).
    config.train.eval_seed = 0
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 3
    config.train.tensorboard = True  # event files in the workdir: tensorboard --logdir WORKDIR

    # Where a fresh run's parameters come from (README "Warm starts"): init.from_checkpoint=
    # "WORKDIR[:STEP]" (another run's parameters) or init.from_hf; "" = random from seed.
    config.init = default_init_config()

    config.mesh = default_mesh_config()

    # --mode=compile's target (README "Will it fit?"): e.g. v5e-32, h100-8; "" = none.
    config.compile = default_compile_config()

    if arg.smoke or arg.repro3 or arg.learns:
        # CPU-minutes preset: short hops, small model and batch. It exercises the whole
        # pipeline (per-k eval included); learning Depo takes far longer than a smoke run.
        config.task.max_hops = 4
        config.task.eval_hops = (1, 2, 4)
        config.model.width = 64
        config.model.heads = 4
        config.model.layers = "attn,jet,attn,jet"
        config.model.chunk_size = 32
        config.sleep.remat = "none"
        config.train.steps = 100
        config.train.batch_size = 16
        config.train.lr = 2e-2
        config.train.adam_lr = 3e-3
        config.train.warmup_steps = 10
        config.train.log_every = 10
        config.train.eval_every = 50
        config.train.eval_size = 64
        config.train.checkpoint_every = 50

    if arg.repro3 or arg.learns:
        # Fig. 3 analogue at laptop scale: cycles of 3..12 nodes from a pool of 24 names, so
        # the 48 edge tokens fill two windows of L = 24 and 4 queries (24 tokens) the third;
        # hops 1..8 in training, eval at k = 1, 2, 4, 8.
        config.task.max_nodes = 12
        config.task.num_names = 24
        config.task.num_queries = 4
        config.task.max_hops = 8
        config.task.eval_hops = (1, 2, 4, 8)
        config.sleep.window = 24
        config.train.steps = REPRO3_STEPS
        config.train.batch_size = 64
        config.train.warmup_steps = 20
        config.train.eval_size = 256
        config.train.checkpoint_every = 50
        config.train.keep_checkpoints = 1

    if arg.learns:
        # repro3 made smaller until N = 1 learns k = 1 on 2 CPU cores (results/README.md, "A
        # Depo that learns", calibration.jsonl): hops 1..4 (eval k = 1, 2, 4); the sizes
        # below are the calibrated ones, each overridable by an argument for calibration.
        config.task.max_nodes = 6  # cycles of 3..6 nodes: the 24 edge tokens fill one window
        config.task.num_queries = 8  # 48 query tokens: two wake windows
        config.task.max_hops = 4
        config.task.eval_hops = (1, 2, 4)
        config.train.steps = LEARNS_STEPS
    if arg.nodes > 0:
        config.task.max_nodes = arg.nodes
    if arg.names > 0:
        config.task.num_names = arg.names
    if arg.queries > 0:
        config.task.num_queries = arg.queries
    if arg.width > 0:
        config.model.width = arg.width
    if arg.train_steps > 0:
        config.train.steps = arg.train_steps
    if arg.passes >= 0:
        config.sleep.passes = arg.passes
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Sleep passes N in {1, 2, 4} (the paper's Fig. 3 comparison), for every preset; the
    presets set model size and budget. The laptop-scale Fig. 3 analogue (results/run_all.sh):

      python -m sleep_lm.sweep --config=experiments/depo.py:repro3 --workdir=results/repro3
      python -m sleep_lm.report results/repro3 --out results/repro3/report

    A Depo that learns (results/run_depo_learns.sh; evaluated per k = 1, 2, 4 in each run):

      python -m sleep_lm.sweep --config=experiments/depo.py:learns --workdir=results/depo_learns
      python -m sleep_lm.report results/depo_learns --out results/depo_learns/report
    """
    del arg
    return [{"sleep.passes": n} for n in (1, 2, 4)]
