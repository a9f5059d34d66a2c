"""sleep_lm: hybrid attention + fast-weight language models that sleep."""

__version__ = "0.1.0"
