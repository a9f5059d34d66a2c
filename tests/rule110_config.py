"""`get_config` of experiments/rule110.py for tests."""

from pathlib import Path

from sleep_lm.config import load_config

REPO = Path(__file__).resolve().parents[1]


def get_config(arg=None):
    return load_config(f"{REPO / 'experiments/rule110.py'}:{arg or ''}")
