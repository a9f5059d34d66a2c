"""sleep_lm: hybrid attention + fast-weight language models that sleep."""

__version__ = "0.1.0"


def load_run(workdir, step=None, **kwargs):
    """A trained run's model, params, SleepSpec and task (see `sleep_lm.run.load_run`)."""
    # Imported on use: `import sleep_lm` stays light (no JAX) for the CLI's --help.
    from sleep_lm.run import load_run as _load_run

    return _load_run(workdir, step, **kwargs)
