"""GSM-Infinite generator and task: every problem is checked by its own solution's arithmetic
and by an independent solver that reads only the statement texts; op counts, lengths,
determinism, disjoint streams, the one-line errors, tokenizers, export, TFDS and a CLI smoke."""

import ast
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sleep_lm.tasks import get_task
from sleep_lm.tasks.gsm_infinite import LEVELS, MODES, TEMPLATES, GsmInfinite, generate_problem
from sleep_lm.tasks.gsm_infinite import export as export_lib

REPO = Path(__file__).resolve().parents[2]
OPS = range(1, 9)
LENGTH = 1200  # bytes: room for op 8 hard plus distractors and noise
TOLERANCE = 72  # bytes below the target at most (the shortest noise statement is shorter)

# ---------------------------------------------------------------- independent solver
# Knows only the grammar of the statements: "X equals k.", "X equals k more than Y.",
# "X equals k times Y.", "X equals Y.", "X equals the sum of Y and Z.", "X equals Y minus Z.",
# quantity phrases "the number of <what> in|at <place>" and "the total number of <what> in|at
# <place>" (a total sums every instance mentioned at that place whose <what> ends with the
# total's <what>, or all of them for the category words below), and the two question forms.

CATEGORIES = ("animals", "teachers", "films")
INSTANCE = re.compile(r"^the number of (.+?) (?:in|at) (.+)$")
TOTAL = re.compile(r"^the total number of (.+?) (?:in|at) (.+)$")
QUANTITY = r"the (?:total )?number of [^.]+?"


def lower_first(text):
    return text[:1].lower() + text[1:]


def parse_rhs(rhs):
    for pattern, kind in (
        (r"^(\d+)$", "const"),
        (r"^(\d+) more than (.+)$", "plus"),
        (r"^(\d+) times (.+)$", "times"),
        (r"^the sum of (.+?) and (the .+)$", "sum"),
        (r"^(.+?) minus (the .+)$", "diff"),
        (r"^(the .+)$", "equal"),
    ):
        m = re.match(pattern, rhs)
        if m:
            return kind, m.groups()
    raise AssertionError(f"unparsed right-hand side {rhs!r}")


def mentions(text):
    # A place is a run of capitalised words ("Pine Ridge Zoo", "Elm Grove High School").
    found = re.findall(
        r"[Tt]he (?:total )?number of .+? (?:in|at) [A-Z][a-z]*(?: [A-Z][a-z]*)*", text
    )
    return [lower_first(m) for m in found]


class TextSolver:
    def __init__(self, problem: str, question: str):
        self.defs = {}
        for sentence in re.findall(r"[^.]+\.", problem):
            m = re.match(r"^\s*(.+?) equals (.+)\.$", sentence)
            assert m, sentence
            name = lower_first(m.group(1))
            assert name not in self.defs, f"defined twice: {name}"
            self.defs[name] = parse_rhs(m.group(2))
        self.instances = {n for n in mentions(problem + " " + question) if INSTANCE.match(n)}

    def value(self, name, env):
        if name in env:
            return env[name]
        if name in self.defs:
            kind, args = self.defs[name]
            if kind == "const":
                v = int(args[0])
            elif kind == "plus":
                v = self.value(args[1], env) + int(args[0])
            elif kind == "times":
                v = int(args[0]) * self.value(args[1], env)
            elif kind == "equal":
                v = self.value(args[0], env)
            elif kind == "sum":
                v = self.value(args[0], env) + self.value(args[1], env)
            else:
                v = self.value(args[0], env) - self.value(args[1], env)
        else:
            m = TOTAL.match(name)
            assert m, f"undefined quantity {name!r}"
            what, place = m.groups()
            parts = [
                n
                for n in self.instances
                if INSTANCE.match(n).group(2) == place
                and (what in CATEGORIES or (" " + INSTANCE.match(n).group(1)).endswith(" " + what))
            ]
            assert parts, f"empty total {name!r}"
            v = sum(self.value(n, env) for n in parts)
        env[name] = v
        return v

    def solve(self, question):
        m = re.match(r"^What is (.+)\?$", question)
        if m:
            return self.value(m.group(1), {})
        m = re.match(r"^If (.+) is (\d+), what is (.+)\?$", question)
        assert m, question
        target, given, unknown = m.group(1), int(m.group(2)), m.group(3)
        assert unknown not in self.defs  # the unknown's definition is left out
        roots = [x for x in range(1, 1001) if self.value(target, {unknown: x}) == given]
        assert len(roots) == 1, (question, roots)
        return roots[0]


# ------------------------------------------------------------------ solution checker


def safe_eval(expr, env):
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
            if isinstance(node.op, ast.Div):
                assert a % b == 0, expr
                return a // b
            return ops[type(node.op)]
        raise AssertionError(f"bad expression {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def check_solution(p, solver):
    """Every step's chain of equalities holds (reverse: at x = the answer), every defined
    letter has the value the independent solver gives its quantity, and the last step is the
    answer."""
    answer = p["answer"]
    env = {"x": answer}
    truth = {}
    if p["mode"] == "reverse":
        unknown = re.match(r"^If .+ is \d+, what is (.+)\?$", p["question"]).group(1)
        truth = {unknown: answer}
    sentences = re.split(r"(?<=\.) ", p["solution"])
    assert sentences[-1] == f"Answer: {answer}."
    last = None
    for s in sentences[:-1]:
        m = re.match(r"^Define (.+) as x; x is unknown\.$", s)
        if m:
            assert p["mode"] == "reverse" and m.group(1) == unknown
            continue
        m = re.match(r"^Define (.+) as ([A-Z]+); so \2 = (.+)\.$", s)
        if m:
            name, letter, chain = m.groups()
            values = {safe_eval(e, env) for e in chain.split(" = ")}
            assert len(values) == 1, s
            env[letter] = values.pop()
            assert env[letter] == solver.value(name, dict(truth)), s
            last = letter
            continue
        m = re.match(r"^We know ([A-Z]+) = (\d+), so (.+) = \2, so x = (.+) = (\d+)\.$", s)
        assert m and p["mode"] == "reverse", s
        letter, given, affine, solved, x = m.groups()
        assert env[letter] == int(given) == safe_eval(affine, env) and letter == last
        assert safe_eval(solved, env) == int(x) == answer
        return
    assert p["mode"] == "forward" and env[last] == answer


def check_problem(p, op, mode, template, level, length):
    assert (p["op"], p["mode"], p["template"], p["level"]) == (op, mode, template, level)
    assert isinstance(p["answer"], int) and 0 <= p["answer"] <= 1000
    assert p["prompt"] == f"{p['question']}\n{p['problem']}\nAnswer:"
    assert p["length"] == len(p["prompt"].encode())
    assert length - TOLERANCE < p["length"] <= length, p["length"]
    solver = TextSolver(p["problem"], p["question"])
    assert solver.solve(p["question"]) == p["answer"]
    check_solution(p, solver)
    for value in re.findall(r"equals (\d+)[ .]", p["problem"]):
        assert 1 <= int(value) <= 4  # constants
    for k in re.findall(r"equals (\d+) (?:more|times)", p["problem"]):
        assert 1 <= int(k) <= 4


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("mode", MODES)
def test_every_problem_is_solved_from_its_text(template, mode):
    for level in LEVELS:
        for op in OPS:
            for seed in range(2):
                rng = np.random.default_rng([seed, op])
                p = generate_problem(
                    rng, op=op, mode=mode, template=template, level=level, length=LENGTH
                )
                check_problem(p, op, mode, template, level, LENGTH)


def test_problems_without_length_hold_only_the_path():
    p = generate_problem(np.random.default_rng(1), op=5, mode="forward", template="zoo")
    solver = TextSolver(p["problem"], p["question"])
    assert solver.solve(p["question"]) == p["answer"]
    steps = p["solution"].count("Define")
    assert len(solver.defs) <= steps  # only path statements (totals have none)


def test_generation_is_deterministic_per_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [
            generate_problem(rng, op=op, mode=m, template="school", level="hard", length=600)
            for op in (1, 4, 8)
            for m in MODES
        ]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.fixture(scope="module")
def task():
    return get_task({"name": "gsm_infinite", "seq_len": 384, "min_op": 1, "max_op": 3})


def test_task_batches_are_exactly_seq_len_with_the_answer_last(task):
    batch = task.sample(np.random.default_rng(0), 6)
    assert batch["inputs"].shape == batch["targets"].shape == (6, 384)
    assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == bool
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert set(batch["op"].tolist()) <= {1, 2, 3}
    for i in range(6):
        mask = batch["loss_mask"][i]
        n = int(mask.sum())
        assert 3 <= n <= task.answer_span and mask[-n:].all()  # " 7" + end .. " 1000" + end
        scored = batch["targets"][i][mask]
        assert scored[-1] == task.tokenizer.end_id
        text = task.render(np.concatenate([batch["inputs"][i], batch["targets"][i, -1:]]))
        assert text.endswith(f"Answer:{bytes(scored[:-1].tolist()).decode()}<end>")
        assert re.fullmatch(r" \d+", bytes(scored[:-1].tolist()).decode())
        assert not text.startswith(" ")  # the filler is dropped


def test_held_out_sets_per_op_and_disjoint_from_training(task):
    sets = task.eval_sets(5, seed=0)
    assert list(sets) == ["@op=1", "@op=2", "@op=3"]
    for k, batch in zip((1, 2, 3), sets.values(), strict=True):
        assert (batch["op"] == k).all()
    problems = task.held_out_problems(5, seed=0, op=2)
    assert [p["op"] for p in problems] == [2] * 5
    np.testing.assert_array_equal(task.batch(problems)["inputs"], sets["@op=2"]["inputs"])
    held = {p["prompt"] for k in (1, 2, 3) for p in task.held_out_problems(20, 0, op=k)}
    from sleep_lm.train import loop

    train = set()
    for step in range(10):
        rng = np.random.default_rng([0, loop.TRAIN_STREAM, step])
        train |= {task.problem(rng)["prompt"] for _ in range(8)}
    assert not held & train


def test_window_schedule_wakes_every_answer_position(task):
    from sleep_lm import sleep

    task.check_window(64)  # 384 = 6 x 64
    batch = task.sample(np.random.default_rng(1), 8)
    schedule = sleep.window_schedule(task.eval_batch(1, 0)["loss_mask"][0], 64)
    assert schedule == (False,) * 5 + (True,)
    assert sleep.window_schedule(batch["loss_mask"], 64) == schedule
    with pytest.raises(ValueError, match=r"^sleep.window=95: the last window .* holds 4 tokens"):
        task.check_window(95)  # 384 = 4 x 95 + 4: the answer could straddle two windows


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"min_op": 3, "max_op": 2}, "task.max_op must be >= min_op (3): empty op range, got 2"),
        ({"min_op": 0}, "task.min_op must be an integer >= 1, got 0"),
        ({"eval_ops": []}, "task.eval_ops is an empty op range"),
        ({"eval_ops": "5-2"}, "task.eval_ops is an empty op range"),
        ({"seq_len": 90}, "task.seq_len=90 leaves 85 prompt tokens: length: 85 tokens is shorter"),
        ({"templates": "zoo,farm"}, "task.templates: unknown template 'farm'; allowed 'zoo'"),
        ({"modes": "sideways"}, "task.modes: unknown mode 'sideways'; allowed 'forward'"),
        ({"levels": "easy"}, "task.levels: unknown level 'easy'"),
        ({"vocab_size": 100}, "task.vocab_size: the model's 100 tokens cannot hold the task's 257"),
    ],
)
def test_errors_name_the_field(fields, message):
    with pytest.raises(ValueError) as info:
        get_task({"name": "gsm_infinite", "seq_len": 320, "max_op": 2, **fields})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_generate_problem_errors():
    rng = np.random.default_rng(0)
    for kwargs, message in (
        ({"template": "farm"}, "template must be one of 'zoo', 'school', 'festival'"),
        ({"mode": "sideways"}, "mode must be one of 'forward', 'reverse'"),
        ({"op": 0}, "op must be an integer >= 1"),
        ({"length": 20}, "length: 20 tokens is shorter than the shortest forward zoo problem"),
    ):
        args = {"op": 2, "mode": "forward", "template": "zoo", **kwargs}
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            generate_problem(rng, **args)


def test_config_validation_checks_the_window():
    from sleep_lm import config as config_lib

    config = config_lib.load_config(f"{REPO / 'experiments/gsm_infinite.py'}:scratch")
    assert config_lib.validate(config, num_devices=1).seq_len == 384
    config.sleep.window = 95  # 384 = 4 x 95 + 4
    with pytest.raises(config_lib.ConfigError, match="^config.sleep.window=95: the last window"):
        config_lib.validate(config)


# ------------------------------------------------------------------------ tokenizers


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A small BPE tokenizer.json trained here on generated text (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    rng = np.random.default_rng(0)
    texts = [
        generate_problem(rng, op=3, mode=m, template=t, length=400)["prompt"] + " 12 345"
        for t in TEMPLATES
        for m in MODES
    ]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path), tok


def test_tokenizer_json_lengths_and_layout(tokenizer_json):
    path, tok = tokenizer_json
    task = GsmInfinite(seq_len=256, max_op=3, tokenizer=path)
    assert task.vocab_size == tok.get_vocab_size()
    assert task.tokenizer.end_id == tok.token_to_id("<|endoftext|>")
    problems = task.held_out_problems(4, seed=0, op=3)
    for p in problems:
        n = len(tok.encode(p["prompt"], add_special_tokens=False).ids)
        assert p["length"] == n <= task.prompt_budget
        assert task.prompt_budget - n < 40  # tokens: one short noise statement
    batch = task.batch(problems)
    assert batch["inputs"].shape == (4, 256)
    full = np.concatenate([batch["inputs"][0], batch["targets"][0, -1:]])
    assert task.render(full).endswith(f"Answer: {problems[0]['answer']}<|endoftext|>")
    task.check_vocab(task.vocab_size + 10)  # a padded embedding holds the tokenizer
    with pytest.raises(ValueError, match="^task.tokenizer: the task's"):
        GsmInfinite(seq_len=256, max_op=2).check_vocab(151936 - 151936 + 100)
    with pytest.raises(ValueError, match="^task.end_token: none of <eos>"):
        get_task({"name": "gsm_infinite", "tokenizer": path, "end_token": "<eos>"})


# ------------------------------------------------------------------- export and TFDS


def test_jsonl_export_matches_the_held_out_sets(tmp_path):
    out = tmp_path / "heldout.jsonl"
    argv = ["--out", str(out), "--ops", "1-2", "--per_op", "3", "--seq_len", "300"]
    assert export_lib.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    for key in ("problem", "question", "solution", "answer", "op", "template", "mode", "length"):
        assert key in rows[0]
    task = GsmInfinite(seq_len=300, min_op=1, max_op=2)
    expected = task.held_out_problems(3, 0, op=1) + task.held_out_problems(3, 0, op=2)
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in expected]
    assert [r["answer"] for r in rows] == [p["answer"] for p in expected]
    err = io.StringIO()
    sys_stderr, sys.stderr = sys.stderr, err
    try:
        assert export_lib.main(["--out", str(out), "--ops", "3-1"]) == 2
    finally:
        sys.stderr = sys_stderr
    assert err.getvalue() == "error: ops: '3-1' is an empty op range\n"


def test_tfds_builder_splits_equal_the_task(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from sleep_lm.tasks import tfds_builders as tb

    config = tb.GsmInfiniteConfig(
        name="tiny", seq_len=320, max_op=2, train_size=4, test_size=3, batch_size=2, seed=1
    )
    tb.build(tb.GsmInfiniteBuilder, tmp_path, config=config)
    task = config.task()
    test = tb.read_split(tb.GsmInfiniteBuilder, "test_op2", tmp_path, config=config)
    expected = task.eval_batch(3, 1, op=2)
    for key in ("inputs", "targets", "loss_mask", "op", "valid"):
        np.testing.assert_array_equal(test[key], expected[key])


# ------------------------------------------------------------------------ CLI smoke


def test_scratch_preset_trains_through_main(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = [
        "--config=experiments/gsm_infinite.py:scratch,steps=2",
        f"--workdir={workdir}",
        "--config.task.seq_len=320",
        "--config.task.max_op=2",
        "--config.task.eval_ops=1-2",
        "--config.model.width=16",
        "--config.model.heads=2",
        "--config.model.mlp_ratio=2",
        "--config.model.layers=attn,gdn",
        "--config.train.batch_size=2",
        "--config.train.eval_size=2",
        "--config.train.eval_every=2",
        "--config.sleep.passes=2",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "sleep_lm.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "eval/accuracy@op=2" in r][-1]
    assert final["step"] == 2
    for key in ("eval/accuracy@op=1", "eval/loss@op=1", "eval/loss@op=2"):
        assert np.isfinite(final[key])
