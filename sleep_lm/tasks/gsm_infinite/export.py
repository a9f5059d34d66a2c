"""Writes GSM-Infinite held-out problems as JSONL, so other systems can be scored on them.

  python -m sleep_lm.tasks.gsm_infinite.export --out /tmp/gsm_heldout.jsonl --ops 2-8 \\
      --per_op 200 --seq_len 512 [--tokenizer tokenizer.json] [--seed 0]

One line per problem: problem, question, solution, answer, op, template, mode, length (the
prompt's tokens in the tokenizer used), plus level, d, id ("op{K}-{i}"), prompt, sentences and
necessary (bool per sentence: on the solution path). ``--layout benchmark`` writes the released
GSM-Infinite data's fields instead (problem, question, solution, op, id, template, mode, length,
d, with its template and mode names: crazy_zootopia / teachers_in_school /
movie_festival_awards, normalforward / forwardreverse), so our problems can be compared with
(or scored by the same code as) the released data. With the
task's settings (the same seq_len, seed, modes, templates, levels and tokenizer as the
training config) these are exactly the problems of the trainer's ``eval/accuracy@op=K`` sets,
in order: ``GsmInfinite.held_out_problems(per_op, seed, op=K)``. Score a system by reading the
integer after "Answer:" in its output and comparing it with ``answer``.
"""

from __future__ import annotations

import argparse
import json
import sys

from sleep_lm.tasks.gsm_infinite import generator
from sleep_lm.tasks.gsm_infinite.task import GsmInfinite

FIELDS = ("problem", "question", "solution", "answer", "op", "template", "mode", "length")
LAYOUTS = ("ours", "benchmark")


def benchmark_record(p: dict, ident) -> dict:
    """A problem dict in the released data's layout (its field and category names)."""
    return {
        "problem": p["problem"],
        "question": p["question"],
        "solution": p["solution"],
        "op": p["op"],
        "id": ident,
        "template": generator.BENCHMARK_TEMPLATE[p["template"]],
        "mode": generator.BENCHMARK_MODE[p["mode"]],
        "length": p["length"],
        "d": p["d"],
    }


def export(task: GsmInfinite, out, ops, per_op: int, seed: int = 0, layout: str = "ours") -> int:
    """Writes ``per_op`` held-out problems per op to the open text file ``out``; returns
    the number of lines."""
    count = 0
    for op in ops:
        for i, p in enumerate(task.held_out_problems(per_op, seed, op=op)):
            if layout == "benchmark":
                out.write(json.dumps(benchmark_record(p, f"op{op}-{i}")) + "\n")
                count += 1
                continue
            record = {key: p[key] for key in FIELDS}
            record.update(level=p["level"], d=p["d"], id=f"op{op}-{i}", prompt=p["prompt"])
            record.update(sentences=p["sentences"], necessary=p["necessary"])
            out.write(json.dumps(record) + "\n")
            count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sleep_lm.tasks.gsm_infinite.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="JSONL file to write ('-': stdout)")
    parser.add_argument("--ops", default="2-8", help="op counts: 'a-b' or 'a,b,c' (default 2-8)")
    parser.add_argument("--per_op", type=int, default=200, help="problems per op (default 200)")
    parser.add_argument("--seq_len", type=int, default=512, help="task.seq_len (tokens)")
    parser.add_argument("--seed", type=int, default=0, help="config.seed of the run")
    parser.add_argument("--modes", default="forward,reverse")
    parser.add_argument("--templates", default="zoo,school,festival")
    parser.add_argument("--levels", default="medium,hard")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: bytes)")
    parser.add_argument("--end_token", default=None)
    parser.add_argument("--length_range", default=None, help="'lo-hi' prompt tokens")
    parser.add_argument("--layout", default="ours", choices=LAYOUTS, help="JSONL fields")
    args = parser.parse_args(argv)
    try:
        if "," in args.ops:
            ops = tuple(int(v) for v in args.ops.split(","))
        else:
            lo, _, hi = args.ops.partition("-")
            ops = tuple(range(int(lo), int(hi or lo) + 1))
        if not ops:
            raise ValueError(f"ops: {args.ops!r} is an empty op range")
        task = GsmInfinite(
            seq_len=args.seq_len,
            min_op=min(ops),
            max_op=max(ops),
            eval_ops=ops,
            modes=args.modes,
            templates=args.templates,
            levels=args.levels,
            tokenizer=args.tokenizer,
            end_token=args.end_token,
            length_range=args.length_range,
        )
        if args.per_op < 1:
            raise ValueError(f"per_op must be >= 1, got {args.per_op}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out == "-":
        count = export(task, sys.stdout, ops, args.per_op, args.seed, args.layout)
    else:
        with open(args.out, "w") as f:
            count = export(task, f, ops, args.per_op, args.seed, args.layout)
        print(f"{args.out}: {count} problems (ops {args.ops}, {task!r})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
