r"""GSM-Infinite-style long-context math with sleep consolidation (paper experiment 3, issue 11).

Each example: a question ("What is the total number of animals in Pine Ridge Zoo?"), then
shuffled statements (the ones the answer needs, unneeded ones from the same world, noise from
other worlds) up to the sequence length, then "Answer:" and the integer; only the answer and
an end token are scored. The answer sits in the last window; every earlier window is slept on
(N = `sleep.passes`), so the question and the facts must be carried in the fast weights.
Difficulty = operation count (sleep_lm.tasks.gsm_infinite.generator); evaluation per op:
`eval/accuracy@op=K`, `eval/loss@op=K` (200 held-out problems per op by default).

`scratch` (the default): a small hybrid trained from scratch on byte-level problems with 1-4
operations in 384 bytes (6 windows of 64). Sized for a CPU (a look at the pipeline, not a
result; see the README for what it reaches):

  python -m sleep_lm.main --config=experiments/gsm_infinite.py:scratch \
      --workdir=/tmp/gsm_scratch --config.sleep.passes=2

Sweep N in {1, 2, 4} (`get_sweep`), then the report:

  python -m sleep_lm.sweep --config=experiments/gsm_infinite.py:scratch --workdir=/tmp/gsm_sweep
  python -m sleep_lm.report /tmp/gsm_sweep --out /tmp/gsm_sweep/report

Export the held-out problems of a run (same seq_len, seed and mix) as JSONL:

  python -m sleep_lm.tasks.gsm_infinite.export --out /tmp/gsm_heldout.jsonl --ops 1-4 \
      --per_op 200 --seq_len 384

The paper's fine-tunes (`ouro`: Ouro-1.4B + Jet layers; `jet`: Jet-Nemotron-2B; `tiny`) need
the pretrained model families (sleep_lm.pretrained) and are not presets here yet.

The argument is a comma-separated list parsed by `sleep_lm.config.parse_arg`: `scratch`,
`passes=N` (sleep.passes), `steps=S` (train.steps).
"""

from ml_collections import config_dict

from sleep_lm.config import default_init_config, default_mesh_config, parse_arg

_ARG_DEFAULTS = {"scratch": False, "passes": -1, "steps": -1}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    arg = parse_arg(arg, **_ARG_DEFAULTS)
    config = config_dict.ConfigDict()
    config.seed = 0

    config.task = config_dict.ConfigDict()
    config.task.name = "gsm_infinite"
    config.task.seq_len = 384  # bytes; a multiple of sleep.window (the answer's window wakes)
    config.task.min_op = 1
    config.task.max_op = 4
    config.task.eval_ops = "1-4"  # eval/accuracy@op=K for each
    config.task.modes = "forward,reverse"
    config.task.templates = "zoo,school,festival"
    config.task.levels = "medium,hard"

    config.model = config_dict.ConfigDict()
    config.model.width = 64
    config.model.heads = 4
    config.model.layers = "attn,gdn,attn,gdn"
    config.model.mlp_ratio = 4
    config.model.rule = "delta"
    config.model.conv_size = 4
    config.model.positions = "learned"
    config.model.gdn_impl = "chunked"
    config.model.chunk_size = 64
    config.model.gdn_precision = "highest"
    config.model.dtype = "float32"

    config.sleep = config_dict.ConfigDict()
    config.sleep.passes = 1
    config.sleep.window = 64  # 5 sleep windows of context, the 6th holds "Answer: N"
    config.sleep.eviction = "hard"
    config.sleep.remat = "none"
    config.sleep.loop_blocks = "all"
    # Truncated gradients (0 = all, full BPTT): only the last M passes of each sleep window,
    # only the last K windows (benchmarks/RESULTS.md measures what they cost and save).
    config.sleep.grad_passes = 0
    config.sleep.grad_windows = 0

    config.train = config_dict.ConfigDict()
    config.train.steps = 600
    config.train.batch_size = 16
    config.train.optimizer = "muon"
    config.train.lr = 1e-2
    config.train.adam_lr = 3e-3
    # As in rule110.py: gates (o_gate_proj, Jet g_proj, Ouro early_exit_gate) to AdamW, but
    # a pretrained SwiGLU MLP's gate_proj is a weight matrix (Muon).
    config.train.adam_patterns = (
        "embed,lm_head,norm,bias,conv,o_gate,exit_gate,a_log,dt_bias,(^|/)a_proj/,(^|/)b_proj/,"
        "(^|/)g_proj/"
    )
    config.train.schedule = "cosine"
    config.train.warmup_steps = 30
    config.train.min_lr_ratio = 0.1
    config.train.grad_clip = 1.0
    config.train.weight_decay = 0.0
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.eval_size = 200  # per op: the paper's 200 held-out problems per op count
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2

    # Where a fresh run's parameters come from (README "Warm starts"): init.from_checkpoint=
    # "WORKDIR[:STEP]" (another run's parameters) or init.from_hf; "" = random from seed.
    config.init = default_init_config()

    config.mesh = default_mesh_config()

    # `scratch` is the only preset so far (and the default); the flag keeps the command line
    # explicit and leaves room for the pretrained presets.
    del arg.scratch
    if arg.passes >= 0:
        config.sleep.passes = arg.passes
    if arg.steps > 0:
        config.train.steps = arg.steps
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Sleep passes N in {1, 2, 4}."""
    del arg
    return [{"sleep.passes": n} for n in (1, 2, 4)]
