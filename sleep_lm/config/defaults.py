"""Defaults of the config sections every experiment shares: `init`, `mesh`, `compile`."""

from ml_collections import config_dict

from sleep_lm import parallel


def default_init_config() -> config_dict.ConfigDict:
    """`config.init` defaults: where a fresh run's parameters come from.

    from_checkpoint: "WORKDIR" or "WORKDIR:STEP", another run's parameters (matched by
    name; fresh optimiser state and schedule); from_hf: a Hugging Face checkpoint directory.
    Both "" (the default): random initialisation from `config.seed`. At most one is set. A
    workdir that already has a checkpoint resumes from it, whatever `init` says.
    """
    return config_dict.ConfigDict({"from_checkpoint": "", "from_hf": ""})


def default_mesh_config() -> config_dict.ConfigDict:
    """`config.mesh` defaults: every device on the data axis, maxtext-style rules.

    Sizes: data=-1 (all the devices the other axes leave), fsdp=1, tensor=1. Rules map each
    logical axis to a comma-separated list of mesh axes ("" = replicated).
    """
    mesh = config_dict.ConfigDict()
    for axis, size in parallel.DEFAULT_MESH.items():
        mesh[axis] = size
    mesh.rules = config_dict.ConfigDict(
        {name: ",".join(axes) for name, axes in parallel.DEFAULT_RULES.items()}
    )
    return mesh


def default_compile_config() -> config_dict.ConfigDict:
    """`config.compile` defaults: `target` of `--mode=compile` ("" = none; e.g. "v5e-32",
    "h100-8"; sleep_lm.compile_targets lists the names)."""
    return config_dict.ConfigDict({"target": ""})
