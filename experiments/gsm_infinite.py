r"""GSM-Infinite-style long-context math with sleep consolidation (paper experiment 3, issue 11).

Each example: a question ("What is the total number of animals in Pine Ridge Zoo?"), then
shuffled statements (the ones the answer needs, unneeded ones from the same world, noise from
other worlds) up to the sequence length, then "Answer:" and the integer; only the answer and
an end token are scored. The answer sits in the last window; every earlier window is slept on
(N = `sleep.passes`), so the question and the facts must be carried in the fast weights.
Difficulty = operation count (sleep_lm.tasks.gsm_infinite.generator); evaluation per op:
`eval/accuracy@op=K`, `eval/loss@op=K` (200 held-out problems per op by default).

`scratch` (the default): a small hybrid trained from scratch on byte-level problems with 2-4
operations in 384 bytes (6 windows of 64). Sized for a CPU (a look at the pipeline, not a
result: in its 600 steps it reaches the most-frequent-answer level, see the README):

  python -m sleep_lm.main --config=experiments/gsm_infinite.py:scratch \
      --workdir=/tmp/gsm_scratch --config.sleep.passes=2

Sweep N in {1, 2, 4} (`get_sweep`), then the report:

  python -m sleep_lm.sweep --config=experiments/gsm_infinite.py:scratch --workdir=/tmp/gsm_sweep
  python -m sleep_lm.report /tmp/gsm_sweep --out /tmp/gsm_sweep/report

Export the held-out problems of a run (same seq_len, seed and mix) as JSONL:

  python -m sleep_lm.tasks.gsm_infinite.export --out /tmp/gsm_heldout.jsonl --ops 2-4 \
      --per_op 200 --seq_len 384

The paper's fine-tunes (experiment 3) start from a Hugging Face checkpoint directory
(`config.init.from_hf=DIR`; the model family reads its config.json and weights, and the task
tokenizes with DIR/tokenizer.json: `task.tokenizer` follows `init.from_hf` unless set).
Download the weights once (`pip install huggingface_hub`; older versions call the command
`huggingface-cli download`):

  hf download ByteDance/Ouro-1.4B --local-dir ~/models/Ouro-1.4B        # Apache-2.0
  hf download jet-ai/Jet-Nemotron-2B --local-dir ~/models/Jet-Nemotron-2B
  # Jet-Nemotron-2B's WEIGHTS are under NVIDIA's non-commercial license (research and
  # evaluation only; a fine-tune inherits that limit). Its code is Apache-2.0.

`ouro`: Ouro-1.4B with 6 Jet layers inserted at load (`model.hf_options.jet_positions=6`:
before layers 2, 6, ..., 22; identity at init, so step 0 is the pretrained model), hard
eviction L = 2000; `ouro_sliding`: the same with sliding-window eviction, L = 512 (the paper
warms N > 1 up with hard eviction first; see below). Sweep N in {1, 2, 4}:

  python -m sleep_lm.main --config=experiments/gsm_infinite.py:ouro \
      --config.init.from_hf=$HOME/models/Ouro-1.4B --workdir=/ckpt/gsm_ouro_n1
  python -m sleep_lm.sweep --config=experiments/gsm_infinite.py:ouro \
      --config.init.from_hf=$HOME/models/Ouro-1.4B --workdir=/ckpt/gsm_ouro
  python -m sleep_lm.sweep --config=experiments/gsm_infinite.py:ouro_sliding \
      --config.init.from_hf=$HOME/models/Ouro-1.4B --workdir=/ckpt/gsm_ouro_sliding

`jet`: Jet-Nemotron-2B (family `qwen2`, model_type jet_nemotron) with sleep looping its
middle 14 of 28 blocks (`sleep.loop_blocks=7:21`, which holds its attention layers 14 and
19 and sliding layer 20), hard eviction L = 2000. Sweep N in {1, 2, 4, 6}:

  python -m sleep_lm.sweep --config=experiments/gsm_infinite.py:jet \
      --config.init.from_hf=$HOME/models/Jet-Nemotron-2B --workdir=/ckpt/gsm_jet

Both: problems with 2-8 operations in 2,000-3,295 tokens (the paper's lengths; the task fills
the prompt with distractors to a length drawn in task.length_range), held out 200 per op
(1,400), global batch 256, Muon lr 1e-3 for the weight matrices + AdamW lr 5e-5 for the rest
(the paper's fine-tuning
values), compute in bfloat16 (parameters float32; Muon's momentum and AdamW's first moment
bfloat16, `train.momentum_dtype`; the weight matrices' gradients add up in bfloat16 through
the loops, `train.weight_grads=compute`), every device on the `fsdp` mesh axis (parameters,
optimiser state and batch sharded over all of them; batch and eval_size must be multiples of
the device count), `sleep.remat=pass`, every layer rematerialised
(`model.remat_policy=full`) and attention that keeps no score tensor (`model.attention_impl=auto`:
Pallas splash attention on TPUs for the hard-evicted windows, 256-query chunks otherwise).
Memory (benchmarks/RESULTS.md, "Memory plan with the real compilers", `--mode=compile`):
ouro at N = 4 takes 27.2 GiB for one example on one H100 (33.2 accumulating 256 microbatches),
11.9 GiB per device on 8; the global batch of 256
is accumulated over train.microbatches = 32 slices (one example per device per slice on 8
devices; --config.train.microbatches=256/n on n devices, and eval steps take one slice).
Open choices, ours: 1000 steps, a 20-step warm-up then
constant rates, clipping 1.0, no weight decay. Warming a sliding run up from a hard-eviction
run (init.from_checkpoint) is not possible yet for a pretrained family: it needs
init.from_hf for the architecture, and init takes one source.

`tiny` (`tiny_jet`): the same pretrained path on a CPU in seconds, from a tiny random
checkpoint that a command writes (no download; sleep_lm/pretrained/tiny.py): Ouro (2 layers
looped twice) with 1 inserted Jet layer (`tiny_jet`: a 4-layer Jet-Nemotron-style model
looping its middle 2 blocks), problems with 2-3 operations in 128 tokens of its byte-level
BPE tokenizer (4 windows of 32), N = 2, 4 steps, then the held-out evaluation. The weights
are random: it shows that the path runs, not what sleep does:

  python -m sleep_lm.pretrained.tiny --family=ouro --out=/tmp/tiny_ouro
  python -m sleep_lm.main --config=experiments/gsm_infinite.py:tiny \
      --config.init.from_hf=/tmp/tiny_ouro --workdir=/tmp/gsm_tiny
  python -m sleep_lm.main --config=experiments/gsm_infinite.py:tiny \
      --config.init.from_hf=/tmp/tiny_ouro --workdir=/tmp/gsm_tiny --mode=eval
  python -m sleep_lm.pretrained.tiny --family=jet_nemotron --out=/tmp/tiny_jet
  python -m sleep_lm.main --config=experiments/gsm_infinite.py:tiny_jet \
      --config.init.from_hf=/tmp/tiny_jet --workdir=/tmp/gsm_tiny_jet

The argument is a comma-separated list parsed by `sleep_lm.config.parse_arg`: one preset
(`scratch` (default), `ouro`, `ouro_sliding`, `jet`, `tiny`, `tiny_jet`), `passes=N`
(sleep.passes), `steps=S` (train.steps). `get_sweep(arg)` sweeps the preset's N.
"""

import os

from ml_collections import config_dict

from sleep_lm.config import (
    default_compile_config,
    default_init_config,
    default_mesh_config,
    parse_arg,
)

# Sleep passes N each preset's sweep runs (the paper's: Ouro {1, 2, 4}, Jet-Nemotron {1, 2, 4, 6}).
SWEEP_PASSES = {
    "scratch": (1, 2, 4),
    "ouro": (1, 2, 4),
    "ouro_sliding": (1, 2, 4),
    "jet": (1, 2, 4, 6),
    "tiny": (1, 2),
    "tiny_jet": (1, 2),
}
PRESETS = tuple(SWEEP_PASSES)
_ARG_DEFAULTS = {**dict.fromkeys(PRESETS, False), "passes": -1, "steps": -1}


def _preset(arg) -> str:
    chosen = [name for name in PRESETS if arg[name]]
    if len(chosen) > 1:
        raise ValueError(f"config argument: choose one preset, got {', '.join(chosen)}")
    return chosen[0] if chosen else "scratch"


def checkpoint_tokenizer(checkpoint: str) -> str:
    """`task.tokenizer` of a run from `init.from_hf=checkpoint`: its tokenizer.json ("" while
    init.from_hf is unset; config validation then asks for it)."""
    return os.path.join(os.path.expanduser(checkpoint), "tokenizer.json") if checkpoint else ""


def _from_hf(config: config_dict.ConfigDict) -> None:
    # task.tokenizer follows init.from_hf (also when --config.init.from_hf=DIR overrides it on
    # the command line): a lazy reference, resolved wherever the config is read or written.
    # An explicit --config.task.tokenizer=FILE replaces it.
    ref = config_dict.FieldReference("", field_type=str)
    config.init.from_hf = ref
    config.task.tokenizer = ref._apply_op(checkpoint_tokenizer)


def _paper_finetune(config: config_dict.ConfigDict) -> None:
    """What `ouro`, `ouro_sliding` and `jet` share (see the module docstring)."""
    _from_hf(config)
    config.task.seq_len = 3300  # the paper's longest problems (2,000-3,300 tokens)
    config.task.min_op = 2  # the benchmark generates ops >= 2 (the paper says 1-8)
    config.task.max_op = 8
    config.task.eval_ops = "2-8"
    config.task.length_range = "2000-3295"  # the paper's lengths, within the answer's room
    # Compute settings load_hf passes to the family (the architecture is the checkpoint's).
    config.model.dtype = "bfloat16"
    config.model.gdn_impl = "chunked"
    config.model.chunk_size = 64
    # Each layer keeps only its input for the backward (recomputed there), and attention
    # over the 2000-3300-token windows runs in 256-query chunks that keep no score tensor:
    # what makes one example fit a device (benchmarks/RESULTS.md, "Memory plan").
    config.model.remat_policy = "full"
    config.model.attention_impl = "auto"
    config.sleep.window = 2000
    config.sleep.eviction = "hard"
    # The most memory-saving remat mode for N > 1 (README, "How sleep runs"): only each pass's
    # inputs are kept; the mode of benchmarks/RESULTS.md's memory plan for these presets
    # (benchmarks/pretrained_memory.py: 54-87 GiB per device at one example per device).
    config.sleep.remat = "pass"
    config.sleep.loop_blocks = "all"
    config.train.steps = 1000  # the paper does not give its fine-tuning length
    # The paper's global batch, accumulated over 32 microbatches: one example per device
    # per microbatch on 8 devices (memory plan: one example per 80-141 GB device). On n
    # devices use --config.train.microbatches=256/n (256 devices: 1).
    config.train.batch_size = 256
    config.train.microbatches = 32
    # Half the bytes of Muon's momentum (AdamW's first moment too), and the weight matrices'
    # gradients in bfloat16 through the sleep passes and Ouro's loops, float32 once per
    # microbatch (train/optim.py; benchmarks/RESULTS.md, "Memory plan").
    config.train.momentum_dtype = "bfloat16"
    config.train.weight_grads = "compute"
    config.train.optimizer = "muon"
    config.train.lr = 1e-3  # Muon, the paper's fine-tuning value (tuned at N = 1)
    config.train.adam_lr = 5e-5  # AdamW group (embeddings, head, norms, gates), the paper's
    config.train.schedule = "constant"
    config.train.warmup_steps = 20
    config.train.min_lr_ratio = 1.0
    config.train.grad_clip = 1.0
    config.train.weight_decay = 0.0
    config.train.log_every = 10
    config.train.eval_every = 250
    config.train.eval_size = 200  # per op: 1,400 held-out problems for ops 2-8
    config.train.checkpoint_every = 250
    config.train.keep_checkpoints = 2
    # Fully sharded data parallel over every device: parameters, optimiser state and batch.
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.mesh.tensor = 1


def _tiny(config: config_dict.ConfigDict) -> None:
    """What `tiny` and `tiny_jet` share: the fine-tune's settings at toy size for a CPU."""
    _from_hf(config)
    config.task.seq_len = 128  # tokens of the tiny checkpoint's BPE (~350 bytes)
    config.task.min_op = 2
    config.task.max_op = 3
    config.task.eval_ops = "2-3"
    config.model.dtype = "float32"
    # The Jet layers' delta rule as a scan over tokens: at 32-token windows on a CPU it
    # compiles faster than the chunked form the full-size presets use (the two agree to
    # float rounding, tests/ops).
    config.model.gdn_impl = "recurrent"
    config.model.chunk_size = 16
    config.model.remat_policy = "full"  # as the full-size presets
    config.sleep.passes = 2
    config.sleep.window = 32  # 3 sleep windows, then the answer's wake window
    config.sleep.eviction = "hard"
    config.sleep.remat = "pass"  # as the full-size presets
    config.sleep.loop_blocks = "all"
    config.train.steps = 4
    config.train.batch_size = 4
    config.train.optimizer = "muon"
    config.train.lr = 1e-3
    config.train.adam_lr = 5e-5
    config.train.schedule = "constant"
    config.train.warmup_steps = 0
    config.train.min_lr_ratio = 1.0
    config.train.log_every = 1
    config.train.eval_every = 4
    config.train.eval_size = 4  # per op
    config.train.checkpoint_every = 4
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.mesh.tensor = 1


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    arg = parse_arg(arg, **_ARG_DEFAULTS)
    preset = _preset(arg)
    config = config_dict.ConfigDict()
    config.seed = 0
    config.task = config_dict.ConfigDict()
    config.task.name = "gsm_infinite"
    config.task.seq_len = 384  # bytes; a multiple of sleep.window (the answer's window wakes)
    config.task.min_op = 2  # ops >= 2, as the benchmark
    config.task.max_op = 4
    config.task.eval_ops = "2-4"  # eval/accuracy@op=K for each
    # Prompt lengths drawn uniformly in "lo-hi" tokens; "" = the paper's 2,000-3,300 scaled
    # to the prompt budget (seq_len minus the answer).
    config.task.length_range = ""
    config.task.modes = "forward,reverse"
    config.task.templates = "zoo,school,festival"
    config.task.levels = "medium,hard"
    # Left padding is inert (batches carry `valid`); "filler" = padding as ordinary text.
    config.task.padding = "inert"
    # --mode=eval also generates each answer greedily (streaming: the prompt is fed, the model
    # sleeps whenever its window fills, then decodes at most the longest answer + end) and
    # parses it: eval/parsed_accuracy@op=K, the benchmark's score, next to the teacher-forced
    # eval/accuracy@op=K. About doubles --mode=eval's time; training's eval never generates.
    config.task.eval_generate = True

    config.model = config_dict.ConfigDict()
    if preset == "scratch":  # the hybrid's architecture; a pretrained family reads its own
        config.model.width = 64  # from the checkpoint's config.json
        config.model.heads = 4
        config.model.layers = "attn,gdn,attn,gdn"
        config.model.mlp_ratio = 4
        config.model.rule = "delta"
        config.model.conv_size = 4
        config.model.positions = "learned"
    # Compute settings (a pretrained family's: what load_hf passes to it).
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
    config.train.microbatches = 1  # gradient accumulation slices (the fine-tunes: 32)
    config.train.momentum_dtype = "float32"  # the fine-tunes: bfloat16 (memory)
    config.train.weight_grads = "float32"  # the fine-tunes: compute (memory)
    config.train.xla_options = ""  # "name=value,...": XLA options of the steps' compiles
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
    # The held-out sets' seed: fixed, so every `seed` of a sweep is scored on the same problems
    # (-1: tie it to `seed`, as before the field existed).
    config.train.eval_seed = 0
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2

    # Where a fresh run's parameters come from (README "Warm starts"): init.from_checkpoint=
    # "WORKDIR[:STEP]" (another run's parameters) or init.from_hf; "" = random from seed.
    config.init = default_init_config()

    config.mesh = default_mesh_config()

    # --mode=compile's target (README "Will it fit?"): e.g. v5e-32, h100-8; "" = none.
    config.compile = default_compile_config()

    if preset == "ouro":
        _paper_finetune(config)
        config.model.family = "ouro"
        # 6 Jet layers (no MLP) before layers 2, 6, 10, 14, 18, 22 (even_jet_positions), the
        # JetBlock shape of Jet-Nemotron-2B (16 heads, key 96, value 256); a sleep pass runs
        # all 4 Ouro loops (sleep_loops "last": only the last loop; the paper leaves it open).
        config.model.hf_options = {"jet_positions": 6, "sleep_loops": "all"}
    elif preset == "ouro_sliding":
        _paper_finetune(config)
        config.model.family = "ouro"
        config.model.hf_options = {"jet_positions": 6, "sleep_loops": "all"}
        config.sleep.window = 512  # 6 sleep windows, then the answer's window (3072 ... 3299)
        config.sleep.eviction = "sliding"
    elif preset == "jet":
        _paper_finetune(config)
        config.model.family = "qwen2"  # model_type jet_nemotron
        config.model.hf_options = {}
        config.sleep.loop_blocks = "7:21"  # the middle 14 of its 28 blocks
    elif preset == "tiny":
        _tiny(config)
        config.model.family = "ouro"
        config.model.hf_options = {
            "jet_positions": 1,
            "jet_heads": 2,
            "jet_key_head_dim": 8,
            "jet_value_head_dim": 16,
            "sleep_loops": "all",
        }
    elif preset == "tiny_jet":
        _tiny(config)
        config.model.family = "qwen2"
        config.model.hf_options = {}
        config.sleep.loop_blocks = "1:3"  # the middle 2 of its 4 blocks

    if arg.passes >= 0:
        config.sleep.passes = arg.passes
    if arg.steps > 0:
        config.train.steps = arg.steps
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Sleep passes N of the preset: {1, 2, 4} (`scratch`, `ouro`, `ouro_sliding`),
    {1, 2, 4, 6} (`jet`), {1, 2} (`tiny`, `tiny_jet`)."""
    preset = _preset(parse_arg(arg, **_ARG_DEFAULTS))
    return [{"sleep.passes": n} for n in SWEEP_PASSES[preset]]
