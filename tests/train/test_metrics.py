"""metrics.jsonl format and the progress line."""

import json
import math

from sleep_lm.train.metrics import MetricsWriter, Progress, format_duration, read_metrics


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
