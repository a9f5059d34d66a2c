"""WORKDIR/metrics.jsonl and the progress line.

metrics.jsonl holds one JSON object per line, each with an integer "step" (the number of
optimiser updates done when it was measured):
- train lines: loss, token_accuracy, accuracy (means over the steps since the previous
  line), lr (Muon group; every parameter's with optimizer "adamw"), adam_lr (AdamW group;
  optimizer "muon" only), grad_norm (before clipping), tokens_per_s;
- eval lines: eval/loss, eval/token_accuracy, eval/accuracy (on the fixed held-out set).
A restarted run appends to the file; lines from steps after the checkpoint it resumes from
(work that was lost) are dropped first, so the file never holds two lines for one step and
kind.

With `tensorboard_dir` (the trainer passes the workdir unless train.tensorboard is false) the
same values also go to TensorBoard event files there (tensorboardX, no TensorFlow): train
values under `train/<key>`, eval values under their own `eval/...` key, at the same step. A
resume rewrites the existing event files without the events after its step (as for
metrics.jsonl), so no reader, TensorBoard or a raw one such as `read_events`, ever sees one
step twice; a fresh run deletes them. View with `tensorboard --logdir WORKDIR` (or a sweep
root: one run per point).
"""

import json
import math
import os
import struct
import time
from pathlib import Path

EVENTS_GLOB = "events.out.tfevents.*"


class MetricsWriter:
    """Appends JSON lines to `path`, flushing each one so that a crash loses nothing written."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume_step: int = 0,
        tensorboard_dir: str | os.PathLike | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step == 0:
            # A fresh run: stale lines from an earlier run in the same workdir would be confusing.
            self.path.write_text("")
        elif self.path.exists():
            self._drop_after(resume_step)
        self._file = open(self.path, "a")
        self._events = None
        if tensorboard_dir is not None:
            self._events = _open_events(Path(tensorboard_dir), resume_step)

    def _drop_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # A line cut short by a kill.
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, values: dict) -> None:
        record = {"step": int(step)}
        for key, value in values.items():
            value = float(value)
            # JSON has no NaN/inf; keep the line valid and the fact visible.
            record[key] = value if math.isfinite(value) else str(value)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._events is not None:
            _write_scalars(self._events, int(step), values)

    def close(self) -> None:
        self._file.close()
        if self._events is not None:
            self._events.close()
            self._events = None


# ----------------------------------------------------------------------------- TensorBoard


def _tag(key: str) -> str:
    # Eval keys carry their own "eval/" prefix; train keys get "train/".
    return key if "/" in key else f"train/{key}"


def _open_events(logdir: Path, resume_step: int):
    """A synchronous tensorboardX event writer in `logdir`, after deleting (fresh run) or
    cutting at `resume_step` (resume) the event files already there."""
    # Synchronous writer (not SummaryWriter's queue thread): each line is on disk after
    # write(), as metrics.jsonl's are.
    from tensorboardX.event_file_writer import EventsWriter

    logdir.mkdir(parents=True, exist_ok=True)
    for path in sorted(logdir.glob(EVENTS_GLOB)):
        if resume_step == 0:
            path.unlink()
        else:
            _drop_events_after(path, resume_step)
    # The suffix keeps a resumed run's file apart from one opened in the same second.
    return EventsWriter(str(logdir / "events"), filename_suffix=f".from{resume_step}")


def _write_scalars(events, step: int, values: dict) -> None:
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    summary = Summary(
        value=[Summary.Value(tag=_tag(k), simple_value=float(v)) for k, v in values.items()]
    )
    events.write_event(Event(wall_time=time.time(), step=step, summary=summary))
    events.flush()


def _records(path: Path):
    """(raw record bytes, Event) of each complete record of an event file (TFRecord framing:
    uint64 length, uint32 length crc, data, uint32 data crc); a record cut short by a kill
    ends the file."""
    from tensorboardX.proto.event_pb2 import Event

    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        end = offset + 12 + length + 4
        if end > len(data):
            break
        event = Event()
        try:
            event.ParseFromString(data[offset + 12 : offset + 12 + length])
        except Exception:  # noqa: BLE001 - protobuf's DecodeError; a torn record ends the file.
            break
        yield data[offset:end], event
        offset = end


def _drop_events_after(path: Path, step: int) -> None:
    kept = [raw for raw, event in _records(path) if event.step <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(kept))
    tmp.replace(path)


def read_events(logdir: str | os.PathLike) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the event files of `logdir`, file by file in
    name order (for tests and scripts; TensorBoard itself reads the same files)."""
    out = []
    for path in sorted(Path(logdir).glob(EVENTS_GLOB)):
        for _, event in _records(path):
            for value in event.summary.value:
                out.append((int(event.step), value.tag, float(value.simple_value)))
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class Progress:
    """Step/total, a bar, loss, tokens/s and ETA, one line per log step.

    Timing starts after the first step of this process, so compilation does not skew the
    rate; the ETA uses the mean time per step since then.
    """

    def __init__(self, total_steps: int, tokens_per_step: int, width: int = 20):
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self.width = width
        self._t0 = None  # (time, step) after the first step
        self._last = None  # (time, step) at the previous line

    def start(self, step: int) -> None:
        """Called once the first (compiling) step of this process has finished."""
        now = time.perf_counter()
        self._t0 = self._last = (now, step)

    def rate(self, step: int) -> float:
        """Tokens per second since the previous call (0 before there is a measurement)."""
        now = time.perf_counter()
        if self._last is None or step <= self._last[1]:
            return 0.0
        then, then_step = self._last
        self._last = (now, step)
        return (step - then_step) * self.tokens_per_step / max(now - then, 1e-9)

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` of non-training work (eval, checkpoint) out of rate and ETA."""
        if self._t0 is not None:
            self._t0 = (self._t0[0] + seconds, self._t0[1])
            self._last = (self._last[0] + seconds, self._last[1])

    def eta(self, step: int) -> float | None:
        if self._t0 is None or step <= self._t0[1]:
            return None
        per_step = (time.perf_counter() - self._t0[0]) / (step - self._t0[1])
        return per_step * (self.total - step)

    def line(self, step: int, loss: float, tokens_per_s: float) -> str:
        filled = int(self.width * step / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        eta = self.eta(step)
        eta_text = "?" if eta is None else format_duration(eta)
        digits = len(str(self.total))
        return (
            f"step {step:>{digits}}/{self.total} [{bar}] loss {loss:.4f} "
            f"{tokens_per_s:,.0f} tok/s eta {eta_text}"
        )
