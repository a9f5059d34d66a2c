"""metrics.jsonl format and the progress line."""

import json
import math

import pytest

from sleep_lm.train.metrics import (
    MetricsWriter,
    Progress,
    format_duration,
    read_events,
    read_metrics,
)


def test_lines_are_json_with_step_and_resume_drops_lost_work(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss": 1.0 / step, "lr": 0.1})
    writer.write(4, {"eval/token_accuracy": 0.5, "eval/accuracy": 0.25, "eval/loss": 0.7})
    writer.write(5, {"loss": math.nan})
    writer.close()
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4, 5]
    assert all(isinstance(r["step"], int) for r in records)
    assert records[4]["eval/token_accuracy"] == 0.5
    assert records[5]["loss"] == "nan"  # JSON has no NaN

    # Resuming from step 3 drops the lines of steps 4 and 5 (they will be redone), keeps
    # 1..3, and appends; a line cut short by a kill is dropped too.
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')
    writer = MetricsWriter(path, resume_step=3)
    writer.write(4, {"loss": 0.2})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [
        (1, 1.0),
        (2, 0.5),
        (3, 1.0 / 3),
        (4, 0.2),
    ]


def test_fresh_run_truncates(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 9, "loss": 1.0}\n')
    MetricsWriter(path).close()
    assert path.read_text() == ""


def test_progress_line():
    progress = Progress(total_steps=200, tokens_per_step=6400, width=10)
    assert progress.eta(10) is None
    progress.start(0)
    line = progress.line(100, 0.12345, 1234.0)
    assert line.startswith("step 100/200 [#####.....] loss 0.1235 1,234 tok/s eta ")
    assert progress.rate(100) > 0
    assert progress.eta(100) is not None and progress.eta(100) >= 0


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 61) == "3h01m"


def test_tensorboard_scalars_steps_and_no_duplicates_after_resume(tmp_path):
    tb = tmp_path / "tb"
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard_dir=tb)
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss": 1.0 / step, "lr": 0.1})
    writer.write(4, {"eval/accuracy": 0.25})
    writer.write(5, {"loss": math.nan})
    writer.close()
    events = read_events(tb)
    assert [s for s, t, _ in events if t == "train/loss"] == [1, 2, 3, 4, 5]
    assert (4, "eval/accuracy", 0.25) in events
    assert (2, "train/lr", pytest.approx(0.1)) in events
    assert math.isnan(events[-1][2])

    # Resume from step 3: steps 4 and 5 are redone; the old file loses them, the new one
    # holds them once. A record cut short by a kill is dropped too.
    (old,) = tb.glob("events.out.tfevents.*")
    with open(old, "ab") as f:
        f.write(b"\x10\x00\x00")
    writer = MetricsWriter(tmp_path / "metrics.jsonl", resume_step=3, tensorboard_dir=tb)
    writer.write(4, {"loss": 0.2})
    writer.write(4, {"eval/accuracy": 0.5})
    writer.close()
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    events = read_events(tb)
    pairs = [(s, t) for s, t, _ in events]
    assert len(pairs) == len(set(pairs))  # no (step, tag) twice
    assert [(s, v) for s, t, v in events if t == "train/loss"] == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(1 / 3)),
        (4, pytest.approx(0.2)),
    ]
    assert [(s, v) for s, t, v in events if t == "eval/accuracy"] == [(4, 0.5)]

    # A fresh run in the same directory starts over; without tensorboard_dir nothing is written.
    MetricsWriter(tmp_path / "metrics.jsonl", tensorboard_dir=tb).close()
    assert read_events(tb) == []
    MetricsWriter(tmp_path / "other.jsonl").close()
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1
