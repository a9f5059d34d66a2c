r"""Run every point of a config's sweep, one after another, each in its own workdir.

  python -m sleep_lm.sweep --config=experiments/rule110.py:smoke --workdir=/tmp/r110_sweep
  python -m sleep_lm.sweep --config=experiments/rule110.py --workdir=/scratch/r110 --print_only

The config module defines `get_sweep(arg=None)` next to `get_config(arg=None)`; it returns a
list of points, each a dict of overrides keyed by dotted field names:

  def get_sweep(arg=None):
      return [{"sleep.passes": n, "task.steps": t} for t in (8, 16) for n in (1, 2, 3, 4)]

Each point runs as `python -m sleep_lm.main --config=<same> --workdir=ROOT/<name>
--config.<field>=<value> ...` in a subprocess, so a crash (or a non-finite loss) in one point
does not stop the others. <name> is built from the overrides: {"sleep.passes": 2,
"task.steps": 8} -> `passes2_steps8` (the full dotted name is used where two fields share a
last component). `--config.<field>=<value>` flags given to the sweep apply to every point, e.g.
`--config.train.steps=50` for a quick trial; a field may not be set both there and by the
sweep.

A point is skipped when it is finished: ROOT/<name>/config.json holds the config the point
would run (so changing a field re-runs it; a field added to sleep_lm after the run was made
counts as the value its absence means, `config.ABSENT_MEANS`), ROOT/<name>/metrics.jsonl has
an eval line at step >= train.steps, and no save of the run is left unfinished: either
ROOT/<name>/checkpoints/ holds a committed checkpoint of that step, or the point has no
checkpoint at all (a run whose metrics were kept without its checkpoints, e.g. a fresh clone
of committed results). The trainer writes the eval line, then saves asynchronously: a run
killed in between has the line, earlier checkpoints (or the final save under orbax's
temporary name) but not the final one, and is not finished. An unfinished point resumes from
its last checkpoint (sleep_lm.main does that).

--print_only prints one shell-quoted launch command per point instead (for a cluster) and runs
nothing. Before anything runs every point's config is built and validated, so a typo in the
sweep fails at once rather than hours in.

Exit status: 0 all points finished; 1 some points failed (listed at the end); 2 bad sweep or
config; 128 + signal number when stopped by SIGINT / SIGTERM (the running point saves a
checkpoint first, and the remaining points do not start).
"""

import copy
import dataclasses
import inspect
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_dict, config_flags


class SweepError(ValueError):
    """A sweep that cannot run; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    overrides: dict  # dotted field -> value; the point's own overrides, in the sweep's order
    config: config_dict.ConfigDict  # the resolved config this point runs


def load_sweep(config_arg: str) -> list[dict]:
    """`get_sweep(arg)` of the module in `config_arg` ('path' or 'path:arg')."""
    path, _, arg = config_arg.partition(":")
    from sleep_lm import config as config_lib

    try:
        module = config_lib.load_config_module(path)
    except FileNotFoundError as e:
        raise SweepError(f"cannot load config file {path!r}") from e
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        raise SweepError(f"{path} defines no get_sweep(); see `python -m sleep_lm.sweep --help`")
    takes_arg = bool(inspect.signature(get_sweep).parameters)
    points = get_sweep(arg or None) if takes_arg else get_sweep()
    if not isinstance(points, list | tuple) or not points:
        raise SweepError(f"{path}: get_sweep() must return a non-empty list of dicts")
    out = []
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise SweepError(f"{path}: get_sweep() point {i} is not a dict: {point!r}")
        # Accept "config.sleep.passes" as well as "sleep.passes".
        out.append({key.removeprefix("config."): value for key, value in point.items()})
    return out


def format_value(value) -> str:
    """A value as a `--config.<field>=` flag argument that parses back to it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _name_part(value) -> str:
    # Directory names: keep letters, digits, '.', '-'; anything else becomes '-'.
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", format_value(value)).strip("-") or "empty"


def point_names(points: list[dict]) -> list[str]:
    """Readable, distinct directory names: {"sleep.passes": 2, "task.steps": 8} ->
    'passes2_steps8'. A field whose last component is shared by another swept field keeps
    its full dotted name ('model.width64'); a point without overrides is 'default'."""
    keys = {key for point in points for key in point}
    last = {}
    for key in keys:
        last.setdefault(key.rsplit(".", 1)[-1], set()).add(key)
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    short = {key: (name if len(last[name]) == 1 else key) for key, name in short.items()}
    names = []
    for point in points:
        parts = [f"{short[key]}{_name_part(value)}" for key, value in point.items()]
        names.append("_".join(parts) or "default")
    seen = {}
    for i, name in enumerate(names):
        if name in seen:
            raise SweepError(
                f"sweep points {seen[name]} ({points[seen[name]]}) and {i} ({points[i]}) "
                f"get the same directory name {name!r}"
            )
        seen[name] = i
    return names


def resolve_points(
    base: config_dict.ConfigDict, points: list[dict], cli_overrides: dict
) -> list[Point]:
    """The config of every point: `base` (which already holds the command-line overrides)
    updated with the point's overrides; unknown fields and wrong types raise SweepError."""
    names = point_names(points)
    out = []
    for i, (name, point) in enumerate(zip(names, points, strict=True)):
        both = sorted(set(point) & set(cli_overrides))
        if both:
            raise SweepError(
                f"config.{both[0]} is set both by the sweep (point {i}) and on the command line"
            )
        config = copy.deepcopy(base)
        try:
            config.update_from_flattened_dict(point)
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise SweepError(f"sweep point {i} ({name}): {e}") from None
        out.append(Point(name=name, overrides=point, config=config))
    return out


def validate_points(points: list[Point]) -> None:
    """sleep_lm's config validation for every point (before any of them runs)."""
    from sleep_lm import config as config_lib

    for point in points:
        try:
            config_lib.validate(point.config)
        except config_lib.ConfigError as e:
            raise SweepError(f"sweep point {point.name}: {e}") from None


def command(
    point: Point,
    config_arg: str,
    root: str,
    cli_overrides: dict,
    *,
    python: str = "python",
    main_module: str = "sleep_lm.main",
) -> list[str]:
    """The argv that runs `point` (command-line overrides first, then the point's)."""
    workdir = f"{root.rstrip('/')}/{point.name}"
    argv = [python, "-m", main_module, f"--config={config_arg}", f"--workdir={workdir}"]
    for key, value in {**cli_overrides, **point.overrides}.items():
        argv.append(f"--config.{key}={format_value(value)}")
    return argv


def _config_json(config: config_dict.ConfigDict):
    # The same serialisation sleep_lm.main writes to config.json, read back as plain JSON.
    return json.loads(config.to_json_best_effort(indent=2, sort_keys=True))


def _same_config(on_disk: dict, config: config_dict.ConfigDict) -> bool:
    """`on_disk` (a config.json) is `config`, fields it predates read as their absent value."""
    from sleep_lm.config import with_absent
    from sleep_lm.dotted import flatten

    return with_absent(flatten(on_disk)) == with_absent(flatten(_config_json(config)))


def is_finished(workdir: str | Path, config: config_dict.ConfigDict) -> bool:
    """True when `workdir` holds a run of `config` trained to config.train.steps (the module
    docstring says what counts)."""
    workdir = Path(workdir)
    try:
        on_disk = json.loads((workdir / "config.json").read_text())
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except (OSError, json.JSONDecodeError):
        return False
    if not _same_config(on_disk, config):
        return False
    total = config.train.steps
    # Orbax writes a step under a temporary name and renames it to the bare step number
    # when the save is committed, so only all-digit names count as checkpoints; any entry
    # at all means the run saved (or was saving) here.
    saved = list((workdir / "checkpoints").glob("*"))
    steps = [int(p.name) for p in saved if p.name.isdigit()]
    if saved and (not steps or max(steps) < total):
        return False
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # A line cut short by a kill.
        if record.get("step", -1) >= total and any(k.startswith("eval/") for k in record):
            return True
    return False


class _Forward:
    """Passes SIGTERM on to the running point, which saves a checkpoint and exits; the sweep
    then stops. (SIGINT from a terminal reaches the point directly: same process group.)"""

    def __init__(self):
        self.proc = None
        self.signum = None

    def _handle(self, signum, frame):
        self.signum = signum
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)
        return False


def run_points(points: list[Point], argvs: list[list[str]], root: Path) -> int:
    """Runs the unfinished points in order; returns the exit status."""
    failed, skipped, ran = [], [], []
    total = len(points)
    with _Forward() as forward:
        for i, (point, argv) in enumerate(zip(points, argvs, strict=True), 1):
            head = f"[{i}/{total}] {point.name}"
            if is_finished(root / point.name, point.config):
                print(f"{head}: finished already, skipping", flush=True)
                skipped.append(point.name)
                continue
            print(f"{head}: {shlex.join(argv)}", flush=True)
            start = time.perf_counter()
            forward.proc = subprocess.Popen(argv)
            try:
                status = forward.proc.wait()
            except KeyboardInterrupt:
                # The point got the same SIGINT; let it save its checkpoint.
                status = forward.proc.wait()
                forward.signum = signal.SIGINT
            forward.proc = None
            seconds = time.perf_counter() - start
            if status < 0:  # Killed by a signal (Popen reports -signum).
                status = 128 - status
            if forward.signum is not None or status in (128 + signal.SIGINT, 128 + signal.SIGTERM):
                signum = forward.signum or status - 128
                print(
                    f"{head}: stopped by {signal.Signals(signum).name} after {seconds:.0f}s; "
                    f"{total - i} points not started",
                    flush=True,
                )
                _summary(ran, skipped, failed + [(point.name, status)])
                return 128 + signum
            if status == 0:
                print(f"{head}: done in {seconds:.0f}s", flush=True)
                ran.append(point.name)
            else:
                print(f"{head}: FAILED with exit status {status} after {seconds:.0f}s", flush=True)
                failed.append((point.name, status))
    _summary(ran, skipped, failed)
    return 1 if failed else 0


def _summary(ran, skipped, failed) -> None:
    print(
        f"sweep: {len(ran)} ran, {len(skipped)} skipped (finished already), {len(failed)} failed",
        flush=True,
    )
    for name, status in failed:
        print(f"  failed: {name} (exit status {status})", flush=True)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    flag = flags.FLAGS["config"]
    main_module = flags.FLAGS.main_module
    config_arg = config_flags.get_config_filename(flag)
    cli_overrides = dict(config_flags.get_override_values(flag))
    root = flags.FLAGS.workdir
    try:
        points = resolve_points(flag.value, load_sweep(config_arg), cli_overrides)
        if main_module == "sleep_lm.main":
            validate_points(points)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)

    if flags.FLAGS.print_only:
        for point in points:
            argv = command(point, config_arg, root, cli_overrides, main_module=main_module)
            print(shlex.join(argv))
        return

    argvs = [
        command(
            point,
            config_arg,
            root,
            cli_overrides,
            python=sys.executable,
            main_module=main_module,
        )
        for point in points
    ]
    sys.exit(run_points(points, argvs, Path(root)))


def _define_flags() -> None:
    """The command's flags, defined when it runs (not on import), so that importing this
    module next to sleep_lm.main (which defines --config too) does not clash."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file with a get_sweep() function, e.g. experiments/rule110.py:smoke. "
        "--config.<field>=<value> overrides apply to every point.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Root directory; point <name> runs in ROOT/<name>.")
    flags.DEFINE_bool(
        "print_only", False, "Print one launch command per point instead of running them."
    )
    flags.DEFINE_string(
        "main_module",
        "sleep_lm.main",
        "Module run with `python -m` for each point (it takes --config, --workdir and "
        "--config.<field> flags like sleep_lm.main).",
    )
    flags.mark_flags_as_required(["config", "workdir"])


def run() -> None:
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
