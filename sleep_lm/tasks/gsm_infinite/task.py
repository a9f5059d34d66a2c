"""GSM-Infinite as a training task: ``get_task({"name": "gsm_infinite", ...})``.

Every example is exactly ``seq_len + 1`` tokens (``inputs`` = the first ``seq_len``,
``targets`` = the last ``seq_len``), laid out as

    pad ... pad | question \\n statements \\n Answer: | " <answer>" | end
                  <= prompt_budget tokens (generator)   scored (loss_mask)

Each prompt (``generator.format_prompt``) is filled with distractors up to a length drawn
uniformly in ``length_range`` (default: the paper's 2,000-3,300 tokens scaled to ``prompt_budget
= seq_len - max_answer_tokens``, i.e. ~0.61 x budget .. budget); the rest of the front is LEFT
padding, so the answer and
the end token are always the last tokens of the sequence and sit in the last window. With
``padding="inert"`` (the default) batches carry ``valid`` (bool [batch, seq_len], False on
the padded inputs) and the model treats padded tokens as absent (README.md, "Variable-length
examples": no fast-weight write or decay, no conv input, never attended to); the pad id is
the tokenizer's filler token, and its value does not matter. ``padding="filler"`` is the
earlier layout: the same filler tokens (a space: byte 32, or the token of " ") as ordinary
text, and no ``valid``. ``loss_mask`` is true exactly on the
targets that are answer tokens or the end token (2-5 positions with bytes: " 0" .. " 1000" and
the end), all within the last ``answer_span`` positions; ``check_window`` (called by config
validation and the trainer) makes sure those all lie in the last (wake) window, whatever the
answer. (With inert padding a loss position outside the last window would also be refused
at run time by the trainer: ``sleep.check_schedule``.)

Batches also carry ``op`` (int32 [batch]): the operation count of each example.

Evaluation: ``eval_sets(size, seed)`` gives one held-out set per operation count in
``eval_ops``, ``size`` problems each (the paper's 200 per op: ``train.eval_size = 200``),
on the seed stream ``[seed, 1, op]``, disjoint from the trainer's ``[seed, 2, step]``:
metrics ``eval/accuracy@op=K`` (all answer tokens and the end token right) and
``eval/loss@op=K``. ``held_out_problems`` returns the same problems as dicts (the JSONL export).

Each example draws its op uniformly in ``min_op..max_op`` (training; ops >= 2, as the
benchmark), its mode and level uniformly among ``modes`` and ``levels``, and its template
among ``templates`` with the benchmark's weights zoo : school : festival = 2 : 1 : 1.
"""

from __future__ import annotations

import re

import numpy as np

from sleep_lm.tasks import _common
from sleep_lm.tasks.gsm_infinite import generator
from sleep_lm.tasks.gsm_infinite import tokens as tokens_lib

# Config fields read by get_task (besides name).
FIELDS = (
    "seq_len",
    "min_op",
    "max_op",
    "eval_ops",
    "modes",
    "templates",
    "levels",
    "tokenizer",
    "end_token",
    "filler",
    "vocab_size",
    "noise",
    "padding",
    "length_range",
)
# The paper's prompt lengths (2,000-3,300 tokens): without task.length_range the range is
# this ratio of the prompt budget (the budget itself at the top).
PAPER_LENGTHS = (2000, 3300)
PADDINGS = ("inert", "filler")


def _names(field: str, value, allowed) -> tuple[str, ...]:
    """A comma-separated string or a sequence of names, each in ``allowed``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items if str(v).strip()]
    if not items:
        raise ValueError(f"{field} must name at least one of {', '.join(map(repr, allowed))}")
    for v in items:
        if v not in allowed:
            names = ", ".join(map(repr, allowed))
            raise ValueError(f"{field}: unknown {field.rstrip('s')} {v!r}; allowed {names}")
    return tuple(dict.fromkeys(items))


def _ops(field: str, value) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            lo, _, hi = value.partition("-")
            value = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise ValueError(
                f"{field} must be 'a-b' or a list of integers >= 1, got {value!r}"
            ) from None
    elif isinstance(value, int | np.integer):
        value = (value,)
    ops = tuple(generator.check_op(v, field) for v in value)
    if not ops:
        raise ValueError(f"{field} is an empty op range")
    return ops


class GsmInfinite:
    """Long-context grade-school math; see the module docstring for the layout.

    Args:
      seq_len: tokens per example (``inputs``), padded on the left to exactly this.
      min_op, max_op: training operation counts, uniform in min_op..max_op.
      eval_ops: op counts with a held-out set each ('a-b', an int or a list; default
        min_op..max_op).
      modes, templates, levels: comma-separated names (or sequences) from ``generator.MODES``,
        ``TEMPLATES``, ``LEVELS``.
      tokenizer: path of a ``tokenizer.json``; None: bytes (vocabulary 257).
      end_token, filler: the end token and the filler text (see ``tokens.HFTokenizer``).
      vocab_size: the model's vocabulary when it differs from the tokenizer's (a pretrained
        model's embedding is often padded); must hold every tokenizer id.
      noise: add filler statements (the template's schema, invented names) to reach the length.
      padding: "inert" (batches carry ``valid``; padded tokens are absent to the model) or
        "filler" (the padding is ordinary filler text; no ``valid``).
      length_range: 'lo-hi' prompt tokens (or a pair), hi <= seq_len - max answer tokens;
        None or '': the paper's 2,000-3,300 scaled to that budget.
    """

    name = "gsm_infinite"

    def __init__(
        self,
        seq_len: int = 512,
        min_op: int = 2,
        max_op: int = 8,
        eval_ops=None,
        modes="forward,reverse",
        templates="zoo,school,festival",
        levels="medium,hard",
        tokenizer: str | None = None,
        end_token: str | None = None,
        filler: str | None = None,
        vocab_size: int | None = None,
        noise: bool = True,
        padding: str = "inert",
        length_range=None,
    ):
        self.seq_len = _common.check_int("seq_len", seq_len, 8)
        self.min_op = generator.check_op(min_op, "min_op")
        if isinstance(max_op, int) and not isinstance(max_op, bool) and max_op < self.min_op:
            raise ValueError(
                f"max_op must be >= min_op ({self.min_op}): empty op range, got {max_op}"
            )
        self.max_op = _common.check_int("max_op", max_op, self.min_op, f"min_op ({self.min_op})")
        self.ops = tuple(range(self.min_op, self.max_op + 1))
        self.eval_ops = self.ops if eval_ops is None else _ops("eval_ops", eval_ops)
        self.modes = _names("modes", modes, generator.MODES)
        self.templates = _names("templates", templates, generator.TEMPLATES)
        self.levels = _names("levels", levels, generator.LEVELS)
        self.noise = bool(noise)
        if padding not in PADDINGS:
            raise ValueError(f"padding: allowed {', '.join(map(repr, PADDINGS))}, got {padding!r}")
        self.padding = padding
        self.tokenizer = tokens_lib.get_tokenizer(tokenizer, end_token, filler)
        tok = self.tokenizer
        self.vocab_size = tok.vocab_size
        if vocab_size is not None:
            if _common.check_int("vocab_size", vocab_size, 1) < tok.vocab_size:
                raise ValueError(
                    f"vocab_size: the model's {vocab_size} tokens cannot hold the task's "
                    f"{tok.vocab_size} ({tok.name}); the task and the model disagree"
                )
            self.vocab_size = int(vocab_size)
        self.max_answer_tokens = max(
            len(tok.encode(generator.answer_text(n))) for n in range(generator.MAX_VALUE + 1)
        )
        self.answer_span = self.max_answer_tokens + 1  # + the end token
        self.prompt_budget = self.seq_len - self.max_answer_tokens
        self.length_range = self._length_range(length_range)
        self.template_p = np.array([generator.TEMPLATE_WEIGHTS[t] for t in self.templates], float)
        self.template_p /= self.template_p.sum()
        self._check_fits()

    def _length_range(self, value) -> tuple[int, int]:
        if value is None or value == "":
            lo, hi = PAPER_LENGTHS
            return max(1, round(self.prompt_budget * lo / hi)), self.prompt_budget
        if isinstance(value, str):
            try:
                lo, hi = (int(v) for v in value.split("-"))
            except ValueError:
                raise ValueError(f"length_range must be 'lo-hi' tokens, got {value!r}") from None
        else:
            lo, hi = generator.check_length(value, "length_range")
        if not 1 <= lo <= hi <= self.prompt_budget:
            raise ValueError(
                f"length_range must satisfy 1 <= lo <= hi <= {self.prompt_budget} (seq_len="
                f"{self.seq_len} minus the answer), got {lo}-{hi}"
            )
        return lo, hi

    def __repr__(self) -> str:
        return (
            f"GsmInfinite(seq_len={self.seq_len}, ops={self.min_op}..{self.max_op}, "
            f"eval_ops={self.eval_ops}, modes={self.modes}, templates={self.templates}, "
            f"levels={self.levels}, lengths={self.length_range}, tokenizer={self.tokenizer!r})"
        )

    def _check_fits(self) -> None:
        """Setup check: a problem of every op / mode / template / level fits the prompt
        budget (one draw each, no distractors: about 0.1 s for 8 ops). Fails with one line
        naming task.seq_len. (Draws whose own statements are too long are redrawn, so a budget
        that only the shorter draws fit biases the problems towards them: give room.)"""
        rng = np.random.default_rng(0)
        for op in sorted(set(self.ops) | set(self.eval_ops)):
            for mode in self.modes:
                for template in self.templates:
                    for level in self.levels:
                        try:
                            generator.generate_problem(
                                rng,
                                op=op,
                                mode=mode,
                                template=template,
                                level=level,
                                length=self.prompt_budget,
                                tokenizer=self.tokenizer,
                                noise=False,
                            )
                        except ValueError as e:
                            raise ValueError(
                                f"seq_len={self.seq_len} leaves {self.prompt_budget} prompt "
                                f"tokens: {e}"
                            ) from None

    def check_window(self, window: int) -> None:
        """One-line ValueError if an answer position could fall outside the last window
        (windows start at 0, the last may be shorter): it would be a sleep window for some
        examples and their answer tokens would not be scored."""
        last_start = ((self.seq_len - 1) // window) * window
        if self.seq_len - self.answer_span < last_start:
            raise ValueError(
                f"sleep.window={window}: the last window of task.seq_len={self.seq_len} holds "
                f"{self.seq_len - last_start} tokens, fewer than the {self.answer_span} answer "
                "positions (answer + end) it must hold; make seq_len a multiple of the window"
            )

    @property
    def scored_from(self) -> int:
        """The first input position that can carry a loss (the answer span is last): the
        streaming eval feeds the positions before it instead of decoding them."""
        return self.seq_len - self.answer_span

    def check_vocab(self, model_vocab_size: int) -> None:
        """One-line ValueError when the model's vocabulary cannot hold the task's tokens."""
        if model_vocab_size < self.vocab_size:
            raise ValueError(
                f"task.tokenizer: the task's {self.vocab_size} tokens ({self.tokenizer.name}) do "
                f"not fit the model's vocabulary of {model_vocab_size}; set task.tokenizer to "
                "the model's tokenizer.json"
            )

    # ------------------------------------------------------------------------ problems

    def problem(self, rng: np.random.Generator, op: int | None = None) -> dict:
        """One problem dict (``generator.generate_problem``), its op uniform in the training
        range unless given; mode and level uniform, template 2 : 1 : 1; the prompt length
        uniform in ``length_range``."""
        if op is None:
            op = self.ops[int(rng.integers(len(self.ops)))]
        mode = self.modes[int(rng.integers(len(self.modes)))]
        template = self.templates[int(rng.choice(len(self.templates), p=self.template_p))]
        level = self.levels[int(rng.integers(len(self.levels)))]
        return generator.generate_problem(
            rng,
            op=op,
            mode=mode,
            template=template,
            level=level,
            length=self.length_range,
            tokenizer=self.tokenizer,
            noise=self.noise,
        )

    def held_out_problems(self, size: int, seed: int = 0, op: int | None = None) -> list[dict]:
        """The held-out problems of ``eval_batch(size, seed, op)``, as dicts."""
        size = _common.check_int("size", size, 1)
        if op is None:
            rng = _common.eval_rng(seed)
        else:
            rng = np.random.default_rng([int(seed), _common.EVAL_STREAM, int(op)])
        return [self.problem(rng, op) for _ in range(size)]

    def tokens(self, problem: dict) -> tuple[np.ndarray, np.ndarray]:
        """(full tokens [seq_len + 1], scored bool [seq_len + 1]) of one problem."""
        full, scored, _ = self._layout(problem)
        return full, scored

    def _layout(self, problem: dict) -> tuple[np.ndarray, np.ndarray, int]:
        """``tokens`` and the number of padding (filler) tokens in front."""
        tok = self.tokenizer
        prompt = tok.encode(problem["prompt"])
        answer = tok.encode(generator.answer_text(problem["answer"])) + [tok.end_id]
        pad = self.seq_len + 1 - len(prompt) - len(answer)
        if pad < 0:  # the generator keeps prompts within prompt_budget
            raise AssertionError(f"problem of {len(prompt)} tokens exceeds seq_len")
        full = np.array([tok.filler_id] * pad + prompt + answer, dtype=np.int32)
        scored = np.zeros(self.seq_len + 1, dtype=bool)
        scored[-len(answer) :] = True
        return full, scored, pad

    def batch(self, problems: list[dict]) -> dict[str, np.ndarray]:
        """inputs/targets/loss_mask (``_common.shift``), op, and with inert padding ``valid``
        (bool [batch, seq_len]: input i is real iff i >= the example's padding length)."""
        full, scored, pads = zip(*(self._layout(p) for p in problems), strict=True)
        batch = _common.shift(np.stack(full), np.stack(scored))
        batch["op"] = np.array([p["op"] for p in problems], dtype=np.int32)
        if self.padding == "inert":
            batch["valid"] = np.arange(self.seq_len)[None] >= np.array(pads)[:, None]
        return batch

    def sample(self, rng: np.random.Generator, batch_size: int, *, op=None) -> dict:
        """A fresh batch: inputs/targets int32 and loss_mask bool [batch, seq_len], op int32
        [batch]. ``op`` fixes the operation count of every example."""
        batch_size = _common.check_batch_size(batch_size)
        return self.batch([self.problem(rng, op) for _ in range(batch_size)])

    def eval_batch(self, size: int, seed: int = 0, op: int | None = None) -> dict:
        """Fixed held-out set: seed stream [seed, 1] (the training mix) or [seed, 1, op]."""
        return self.batch(self.held_out_problems(size, seed, op))

    def eval_sets(self, size: int, seed: int = 0) -> dict[str, dict]:
        """One held-out set of ``size`` problems per op in ``eval_ops``: suffix "@op=K"."""
        return {f"@op={k}": self.eval_batch(size, seed, op=k) for k in self.eval_ops}

    # ------------------------------------------------------------ generation scoring

    def generation_batch(self, batch: dict) -> dict[str, np.ndarray]:
        """The prompts of a batch laid out for generation, without the answer's length.

        Returns ``prompt`` int32 [n, prompt_budget] (the question, statements and "Answer:",
        left-padded so that every prompt ends at position prompt_budget - 1: the layout of
        the longest answer; a teacher-forced example with a shorter answer has that many
        more padding tokens in front), ``valid`` bool [n, prompt_budget] (inert padding
        only) and ``answer`` int64 [n]. Generation then has ``answer_span`` tokens (the
        longest answer and the end token) before the sequence length."""
        inputs = np.asarray(batch["inputs"])
        targets, mask = np.asarray(batch["targets"]), np.asarray(batch["loss_mask"], bool)
        budget = self.prompt_budget
        first = mask.argmax(axis=1)  # the first answer token's target position
        rows = np.arange(len(inputs))[:, None]
        cols = first[:, None] + 1 - budget + np.arange(budget)[None]
        out = {"prompt": inputs[rows, cols].astype(np.int32)}
        dropped = np.arange(inputs.shape[1])[None] < (first + 1 - budget)[:, None]
        if "valid" in batch:
            valid = np.asarray(batch["valid"], bool)
            out["valid"] = valid[rows, cols]
            if (valid & dropped).any():  # the generator keeps prompts within the budget
                raise AssertionError("a prompt is longer than prompt_budget")
        end = self.tokenizer.end_id
        out["answer"] = np.array(
            [
                int(self.tokenizer.decode(t[m & (t != end)]))
                for t, m in zip(targets, mask, strict=True)
            ],
            dtype=np.int64,
        )
        return out

    def parse_answer(self, ids) -> int | None:
        """The integer a generated continuation of "Answer:" states: the text before the end
        token, its first line, an integer at its start (after spaces; anything after the
        digits is ignored, e.g. " 42."); None when there is none."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.tokenizer.end_id in ids:
            ids = ids[: ids.index(self.tokenizer.end_id)]
        line = self.tokenizer.decode(ids).lstrip(" \t").split("\n", 1)[0]
        match = re.match(r"-?\d+", line)
        return int(match.group()) if match else None

    def render(self, tokens) -> str:
        """Text of a token sequence (leading filler dropped; the end token as the tokenizer
        writes it, "<end>" for bytes)."""
        ids = np.asarray(tokens).reshape(-1).tolist()
        start = 0
        while start < len(ids) and ids[start] == self.tokenizer.filler_id:
            start += 1
        return self.tokenizer.decode(ids[start:])
