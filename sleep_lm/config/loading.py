"""Experiment config files (experiments/*.py; not a package): loading one by path, and
parsing the argument of their `get_config(arg)`."""

import importlib.util
from pathlib import Path

from ml_collections import config_dict


def load_config_module(path: str | Path):
    """The experiment config file at `path` as a module, loaded by path as `config_flags`
    does (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_sleep_lm_config_{Path(path).stem}", path)
    if spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"no config file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(config_arg: str | Path) -> config_dict.ConfigDict:
    """`get_config(arg)` of 'path' or 'path:arg', the form `--config` takes.

    For notebooks, benchmarks and tests: `load_config("experiments/rule110.py:smoke")`.
    """
    path, _, arg = str(config_arg).partition(":")
    return load_config_module(path).get_config(arg or None)


def parse_arg(arg: str | None, **defaults) -> config_dict.ConfigDict:
    """Parses 'smoke,steps=1' into a ConfigDict; bare names set booleans to True.

    Values take the type of their default; unknown names raise ValueError.
    """
    out = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if name not in defaults:
            raise ValueError(f"unknown config argument {name!r}; allowed: {sorted(defaults)}")
        default = defaults[name]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {name!r} needs a value ({name}=...)")
            out[name] = True
        elif isinstance(default, bool):
            out[name] = value.lower() in ("1", "true", "yes")
        else:
            out[name] = type(default)(value)
    return config_dict.ConfigDict(out)
