"""experiments/rule110.py with a `config.mesh` section (the defaults of
sleep_lm.config.default_mesh_config when the experiment has none), so that the tests can
override `--config.mesh.*` fields: `--config=tests/rule110_mesh.py:smoke`."""

import importlib.util
from pathlib import Path

from sleep_lm.config import default_mesh_config

REPO = Path(__file__).resolve().parents[1]


def get_config(arg=None):
    spec = importlib.util.spec_from_file_location("_rule110", REPO / "experiments/rule110.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    if "mesh" not in config:
        config.mesh = default_mesh_config()
    return config
