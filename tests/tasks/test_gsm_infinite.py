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
LENGTH = 2400  # bytes: room for op 8 hard plus distractors and filler
TOLERANCE = 160  # bytes below the target at most (the shortest filler statement is shorter)

# ---------------------------------------------------------------- independent solver
# Knows only the statement grammar: "Q equals k.", "Q equals [k plus|times] <operands>.",
# operands "R", "the sum of R and S", "the difference between R and S", "the sum of R, S, and
# T"; "Q is a positive number." (reverse mode's unknown); quantity phrases "the number of
# <items> in|at <Place>", "the average number of <child> per <item> in|at <Place>" and "the
# total number of <word> in|at <Place>": a total is the sum over the place's averages of
# <word> of average x count ("per <item>" pairs with "<item>s"), or, with no such averages, the
# sum of every count mentioned at the place. It recounts op as the in-degrees over the asked
# quantity's closure (a constant counts one, a total its components).

PLACE = r"(?:in|at) ([A-Z][\w-]*(?: [A-Z][\w-]*)*)"
COUNT = re.compile(rf"^the number of (.+?) {PLACE}$")
AVERAGE = re.compile(rf"^the average number of (.+?) per (.+?) {PLACE}$")
TOTAL = re.compile(rf"^the total number of (.+?) {PLACE}$")
MENTION = re.compile(rf"[Tt]he (?:total |average )?number of .+? {PLACE}")


def lower_first(text):
    return text[:1].lower() + text[1:]


def parse_operands(text):
    for pattern, kind in (
        (r"^the sum of (.+), and (the .+)$", "sum"),
        (r"^the sum of (.+?) and (the .+)$", "sum"),
        (r"^the difference between (.+?) and (the .+)$", "diff"),
    ):
        m = re.match(pattern, text)
        if m:
            names = m.group(1).split(", ") + [m.group(2)]
            return kind, names
    assert text.startswith("the "), text
    return "sum", [text]


def parse_rhs(rhs):
    """(k, 'plus'|'times'|None, kind, operand names)."""
    m = re.match(r"^(\d+)$", rhs)
    if m:
        return int(m.group(1)), None, "const", []
    m = re.match(r"^(\d+) (plus|times) (the .+)$", rhs)
    if m:
        return (int(m.group(1)), m.group(2), *parse_operands(m.group(3)))
    return (0, None, *parse_operands(rhs))


class TextSolver:
    def __init__(self, sentences, question):
        self.defs, self.values_given, self.unknown = {}, {}, None
        text = " ".join(sentences) + " " + question
        self.mentioned = {lower_first(m.group(0)) for m in MENTION.finditer(text)}
        for sentence in sentences:
            m = re.match(r"^(.+) is a positive number\.$", sentence)
            if m:
                assert self.unknown is None
                self.unknown = lower_first(m.group(1))
                continue
            m = re.match(r"^(.+?) equals (.+)\.$", sentence)
            assert m, sentence
            name, rhs = lower_first(m.group(1)), parse_rhs(m.group(2))
            if TOTAL.match(name):  # totals are implied, so this is reverse mode's given value
                assert rhs[2] == "const" and not self.values_given, sentence
                self.values_given[name] = rhs[0]
                continue
            if name in self.defs:  # reverse mode: the target's definition and its value
                given, rhs = (rhs, self.defs[name]) if rhs[2] == "const" else (self.defs[name], rhs)
                assert given[2] == "const" and name not in self.values_given, sentence
                self.values_given[name] = given[0]
            self.defs[name] = rhs
        self.question = re.match(r"^What is (.+)\?$", question).group(1)

    def parts(self, name):
        """Operands of a definition or a total, and the in-degree (op) of ``name``."""
        if name == self.unknown:
            return [], 1
        if name in self.defs:
            k, _, kind, names = self.defs[name]
            return names, len(names) + (1 if k else 0)
        m = TOTAL.match(name)
        assert m, f"undefined quantity {name!r}"
        word, place = m.groups()
        pairs = []
        for n in self.mentioned:
            a = AVERAGE.match(n)
            if a and a.group(1) == word and a.group(3) == place:
                pairs += [
                    f"the number of {a.group(2)}s {name.split()[-len(place.split()) - 1]} {place}",
                    n,
                ]
        if pairs:
            return pairs, len(pairs)
        counts = [n for n in self.mentioned if COUNT.match(n) and COUNT.match(n).group(2) == place]
        assert counts, f"empty total {name!r}"
        return counts, len(counts)

    def value(self, name, env):
        if name in env:
            return env[name]
        names, _ = self.parts(name)
        vals = [self.value(n, env) for n in names]
        if name in self.defs:
            k, how, kind, _ = self.defs[name]
            if kind == "const":
                v = k
            else:
                v = vals[0] - vals[1] if kind == "diff" else sum(vals)
                v = v * k if how == "times" else v + k
        elif AVERAGE.match(names[-1]) if names else False:
            v = sum(vals[i] * vals[i + 1] for i in range(0, len(vals), 2))
        else:
            v = sum(vals)
        env[name] = v
        return v

    def closure(self, name, seen=None):
        seen = set() if seen is None else seen
        if name not in seen:
            seen.add(name)
            for n in self.parts(name)[0]:
                self.closure(n, seen)
        return seen

    def target(self):
        if self.unknown is None:
            return self.question
        assert self.question == self.unknown and len(self.values_given) == 1
        return next(iter(self.values_given))

    def op(self):
        return sum(self.parts(n)[1] for n in self.closure(self.target()))

    def solve(self):
        if self.unknown is None:
            return self.value(self.question, {})
        target, given = next(iter(self.values_given.items()))
        roots = [x for x in range(1, 1001) if self.value(target, {self.unknown: x}) == given]
        assert len(roots) == 1, roots
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
    """Every step's chain of equalities holds (reverse: at x = the answer), every letter has
    the value the text solver gives its quantity, and the last step is the answer."""
    answer = p["answer"]
    env = {"x": answer}
    truth = {solver.unknown: answer} if p["mode"] == "reverse" else {}
    steps = re.split(r"(?<=\.) ", p["solution"])
    assert steps[-1] == f"Answer: {answer}."
    last = None
    for s in steps[:-1]:
        m = re.match(r"^Define (.+) as x; x is unknown\.$", s)
        if m:
            assert p["mode"] == "reverse" and m.group(1) == solver.unknown
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


def check_problem(p, op, mode, template, level):
    assert (p["op"], p["mode"], p["template"], p["level"]) == (op, mode, template, level)
    assert p["d"] == {"medium": 2, "hard": 3}[level]
    assert isinstance(p["answer"], int) and 0 <= p["answer"] <= 1000
    assert p["problem"] == " ".join(p["sentences"]) and len(p["necessary"]) == len(p["sentences"])
    assert p["prompt"] == f"{p['question']}\n{p['problem']}\nAnswer:"
    assert p["length"] == len(p["prompt"].encode())
    solver = TextSolver(p["sentences"], p["question"])
    assert solver.solve() == p["answer"]
    assert solver.op() == op  # the op recounted from the statements alone
    needed = [s for s, n in zip(p["sentences"], p["necessary"], strict=True) if n]
    alone = TextSolver(needed, p["question"])  # the necessary sentences suffice
    assert alone.solve() == p["answer"] and alone.op() == op
    check_solution(p, solver)
    given = [f"{n} equals {v}." for n, v in solver.values_given.items()]  # reverse's value
    for sentence in p["sentences"]:
        if lower_first(sentence) not in given:  # constants are 1..4 (the benchmark's range 5)
            for k in re.findall(r"equals (\d+)(?: plus| times|\.)", sentence):
                assert 1 <= int(k) <= 4, sentence
    if mode == "reverse":
        assert p["answer"] >= 1 and sum(s.endswith("is a positive number.") for s in needed) == 1
    return solver


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mode", MODES)
def test_every_problem_is_solved_from_its_sentences(mode, level):
    """Ops 2..20, every template, no filler (the benchmark's zero-context problems)."""
    for op in range(2, 21):
        template = TEMPLATES[op % 3]
        rng = np.random.default_rng([op, 7])
        p = generate_problem(rng, op=op, mode=mode, template=template, level=level)
        check_problem(p, op, mode, template, level)


@pytest.mark.parametrize("mode", MODES)
def test_problems_with_filler_reach_their_length(mode):
    for level in LEVELS:
        for op in (2, 5, 8):
            for template in TEMPLATES:
                rng = np.random.default_rng([op, 3])
                p = generate_problem(
                    rng, op=op, mode=mode, template=template, level=level, length=LENGTH
                )
                check_problem(p, op, mode, template, level)
                assert LENGTH - TOLERANCE < p["length"] <= LENGTH, p["length"]


def test_filler_uses_the_template_schema_and_real_quantities():
    """Filler (sentences about places of the template's filler vocabulary) names an item of
    the same template and is defined from quantities of the problem's own world."""
    from sleep_lm.tasks.gsm_infinite.worlds import WORLDS

    filler, good, total = 0, 0, 0
    for i, template in enumerate(TEMPLATES * 4):
        t = WORLDS[template]
        p = generate_problem(
            np.random.default_rng(i),
            op=4,
            mode=MODES[i % 2],
            template=template,
            level=LEVELS[i // 6],
            length=1500,
        )
        real = {
            q
            for q in TextSolver(p["sentences"], p["question"]).mentioned
            if MENTION.match(q).group(1) in t.locations
        }
        for s, needed in zip(p["sentences"], p["necessary"], strict=True):
            total += 1
            subject = re.match(r"^(.+?) equals (.+)\.$", s)
            place = MENTION.match(subject.group(1)).group(1) if subject else None
            if place not in t.filler_locations:
                continue
            assert not needed
            filler += 1
            item = AVERAGE.match(lower_first(subject.group(1))) or COUNT.match(
                lower_first(subject.group(1))
            )
            own = any(item.group(0).find(f" {w}") >= 0 for w in t.filler_items)
            refs = [lower_first(m.group(0)) for m in MENTION.finditer(subject.group(2))]
            good += own and 1 <= len(refs) <= 2 and all(r in real for r in refs)
    assert filler > 0.2 * total, (filler, total)  # filler is a sizeable share at this length
    assert good / filler > 0.95, (good, filler)


def test_hard_problems_multiply_count_by_average():
    """A child total on the path (read from the text) shows up as a product of two letters in
    the solution; about 20% of hard problems of ops 4..20 have one (measured 25 / 136)."""
    products = 0
    for op in range(4, 21):
        p = generate_problem(
            np.random.default_rng([op, 1]), op=op, mode=MODES[op % 2], template="zoo", level="hard"
        )
        solver = TextSolver(p["sentences"], p["question"])
        closure = solver.closure(solver.target())
        found = any(TOTAL.match(n) and AVERAGE.match(solver.parts(n)[0][-1]) for n in closure)
        assert found == bool(re.search(r"[A-Zx]+ \* [A-Zx]+", p["solution"])), p["solution"]
        products += found
    assert products >= 1, products


def test_lengths_vary_within_the_range(task):
    lengths = [p["length"] for p in task.held_out_problems(12, seed=0, op=3)]
    lo, hi = task.length_range
    assert all(lo - TOLERANCE < n <= hi for n in lengths) and len(set(lengths)) > 6


def test_template_mix_is_two_to_one_to_one(task):
    rng = np.random.default_rng(0)
    draws = [task.templates[int(rng.choice(3, p=task.template_p))] for _ in range(4000)]
    assert abs(draws.count("zoo") / 4000 - 0.5) < 0.05
    assert abs(draws.count("school") / 4000 - 0.25) < 0.05


def test_problems_without_length_hold_the_world_but_no_filler():
    from sleep_lm.tasks.gsm_infinite.worlds import WORLDS

    p = generate_problem(np.random.default_rng(1), op=5, mode="forward", template="zoo")
    assert not any(place in p["problem"] for place in WORLDS["zoo"].filler_locations)
    assert 0 < sum(p["necessary"]) <= len(p["sentences"])


def test_generation_is_deterministic_per_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [
            generate_problem(rng, op=op, mode=m, template="school", level="hard", length=1500)
            for op in (2, 4, 8)
            for m in MODES
        ]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.fixture(scope="module")
def task():
    return get_task({"name": "gsm_infinite", "seq_len": 384, "min_op": 2, "max_op": 4})


def test_task_batches_are_exactly_seq_len_with_the_answer_last(task):
    batch = task.sample(np.random.default_rng(0), 6)
    assert batch["inputs"].shape == batch["targets"].shape == (6, 384)
    assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == bool
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert set(batch["op"].tolist()) <= {2, 3, 4}
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
    assert list(sets) == ["@op=2", "@op=3", "@op=4"]
    for k, batch in zip((2, 3, 4), sets.values(), strict=True):
        assert (batch["op"] == k).all()
    problems = task.held_out_problems(5, seed=0, op=2)
    assert [p["op"] for p in problems] == [2] * 5
    np.testing.assert_array_equal(task.batch(problems)["inputs"], sets["@op=2"]["inputs"])
    held = {p["prompt"] for k in (2, 3, 4) for p in task.held_out_problems(20, 0, op=k)}
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
        ({"min_op": 1}, "task.min_op must be an integer >= 2 (the benchmark's smallest op), got 1"),
        ({"length_range": "10-400"}, "task.length_range must satisfy 1 <= lo <= hi <= 395"),
        ({"length_range": "abc"}, "task.length_range must be 'lo-hi' tokens, got 'abc'"),
        ({"eval_ops": []}, "task.eval_ops is an empty op range"),
        ({"eval_ops": "5-2"}, "task.eval_ops is an empty op range"),
        ({"seq_len": 60}, "task.seq_len=60 leaves 55 prompt tokens: length: 55 tokens is shorter"),
        ({"templates": "zoo,farm"}, "task.templates: unknown template 'farm'; allowed 'zoo'"),
        ({"modes": "sideways"}, "task.modes: unknown mode 'sideways'; allowed 'forward'"),
        ({"levels": "easy"}, "task.levels: unknown level 'easy'"),
        ({"vocab_size": 100}, "task.vocab_size: the model's 100 tokens cannot hold the task's 257"),
    ],
)
def test_errors_name_the_field(fields, message):
    with pytest.raises(ValueError) as info:
        get_task({"name": "gsm_infinite", "seq_len": 400, "max_op": 3, **fields})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_generate_problem_errors():
    rng = np.random.default_rng(0)
    for kwargs, message in (
        ({"template": "farm"}, "template must be one of 'zoo', 'school', 'festival'"),
        ({"mode": "sideways"}, "mode must be one of 'forward', 'reverse'"),
        ({"op": 1}, "op must be an integer >= 2 (the benchmark's smallest op), got 1"),
        ({"length": (5, 2)}, "length must satisfy 1 <= lo <= hi, got (5, 2)"),
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
    task = GsmInfinite(seq_len=384, max_op=3, tokenizer=path)
    assert task.vocab_size == tok.get_vocab_size()
    assert task.tokenizer.end_id == tok.token_to_id("<|endoftext|>")
    problems = task.held_out_problems(4, seed=0, op=3)
    for p in problems:
        n = len(tok.encode(p["prompt"], add_special_tokens=False).ids)
        assert p["length"] == n <= task.prompt_budget
        assert task.length_range[0] - 60 < n  # tokens: one filler statement below the draw
    batch = task.batch(problems)
    assert batch["inputs"].shape == (4, 384)
    full = np.concatenate([batch["inputs"][0], batch["targets"][0, -1:]])
    assert task.render(full).endswith(f"Answer: {problems[0]['answer']}<|endoftext|>")
    task.check_vocab(task.vocab_size + 10)  # a padded embedding holds the tokenizer
    with pytest.raises(ValueError, match="^task.tokenizer: the task's"):
        GsmInfinite(seq_len=384, max_op=3).check_vocab(100)
    with pytest.raises(ValueError, match="^task.end_token: none of <eos>"):
        get_task({"name": "gsm_infinite", "tokenizer": path, "end_token": "<eos>"})


# ------------------------------------------------------------------- export and TFDS


def test_jsonl_export_matches_the_held_out_sets(tmp_path):
    out = tmp_path / "heldout.jsonl"
    argv = ["--out", str(out), "--ops", "2-3", "--per_op", "3", "--seq_len", "400"]
    assert export_lib.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    for key in ("problem", "question", "solution", "answer", "op", "template", "mode", "length"):
        assert key in rows[0]
    task = GsmInfinite(seq_len=400, min_op=2, max_op=3)
    expected = task.held_out_problems(3, 0, op=2) + task.held_out_problems(3, 0, op=3)
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in expected]
    assert [r["answer"] for r in rows] == [p["answer"] for p in expected]
    assert [r["necessary"] for r in rows] == [p["necessary"] for p in expected]
    assert [r["sentences"] for r in rows] == [p["sentences"] for p in expected]
    bench = tmp_path / "bench.jsonl"
    assert export_lib.main([*argv[2:], "--out", str(bench), "--layout", "benchmark"]) == 0
    rows = [json.loads(line) for line in bench.read_text().splitlines()]
    assert set(rows[0]) == {
        "problem",
        "question",
        "solution",
        "op",
        "id",
        "template",
        "mode",
        "length",
        "d",
    }
    assert {r["mode"] for r in rows} <= {"normalforward", "forwardreverse"}
    assert [r["problem"] for r in rows] == [p["problem"] for p in expected]
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
        name="tiny", seq_len=400, max_op=3, train_size=4, test_size=3, batch_size=2, seed=1
    )
    tb.build(tb.GsmInfiniteBuilder, tmp_path, config=config)
    task = config.task()
    test = tb.read_split(tb.GsmInfiniteBuilder, "test_op3", tmp_path, config=config)
    expected = task.eval_batch(3, 1, op=3)
    for key in ("inputs", "targets", "loss_mask", "op", "valid"):
        np.testing.assert_array_equal(test[key], expected[key])


# ------------------------------------------------------------------------ CLI smoke


def test_scratch_preset_trains_through_main(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = [
        "--config=experiments/gsm_infinite.py:scratch,steps=2",
        f"--workdir={workdir}",
        "--config.task.seq_len=384",
        "--config.task.max_op=2",
        "--config.task.eval_ops=2",
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
    for key in ("eval/accuracy@op=2", "eval/loss@op=2"):
        assert np.isfinite(final[key])
