"""Config validation: every mistake we can see without compiling, as one line naming the field.

    validate(config)   # raises ConfigError("config.sleep.passes must be >= 1 (got 0)")

`sleep_lm.main` prints the message as `error: ...` and exits with status 2. Checks cover the
fields of experiments/*.py (see README "Config reference"); the task's own constructor checks
its fields (`get_task` raises ValueError naming `task.<field>`), and the model's builder
checks anything model-specific this package does not know about.

The mesh (`config.mesh`, see sleep_lm/parallel/) is checked in two steps: `validate`
checks what needs no device (sizes, rules); `validate_mesh(config, num_devices)` checks the
sizes against the devices, the batch against the batch axes and the heads against the
tensor axis. `main` calls it after `jax.distributed.initialize` (which must come before
anything touches a device) and before compiling.

The package, one concern a module (every public name is importable from `sleep_lm.config`):
  fields     ConfigError and the readers of one field (`_int`, `_choice`, ...)
  family     config.model, model.family against init.from_hf, config.init
  training   config.sleep, config.train, task.eval_generate
  mesh       config.mesh against the devices, config.compile.target
  resume     RESUMABLE_FIELDS, resume_conflict, eval_overrides
  loading    load_config (experiments/*.py by path), parse_arg (their argument)
  defaults   default_init_config, default_mesh_config, default_compile_config
"""

from ml_collections import config_dict

from sleep_lm.config.defaults import (
    default_compile_config,
    default_init_config,
    default_mesh_config,
)
from sleep_lm.config.family import (
    MODEL_FAMILY_DEFAULT,
    _validate_checkpoint_dir,
    _validate_family,
    _validate_init,
    _validate_model,
    layer_types,
    model_family,
    pretrained_options,
)
from sleep_lm.config.fields import ConfigError, _get, _int
from sleep_lm.config.loading import load_config, load_config_module, parse_arg
from sleep_lm.config.mesh import _validate_mesh_static, compile_target, validate_mesh
from sleep_lm.config.resume import (
    ABSENT_MEANS,
    RESUMABLE_FIELDS,
    eval_overrides,
    resume_conflict,
    retired_fields,
    with_absent,
)
from sleep_lm.config.training import _validate_eval_generate, _validate_sleep, _validate_train
from sleep_lm.train.init import init_checkpoint  # config.init's parser

__all__ = [
    "MODEL_FAMILY_DEFAULT",
    "ABSENT_MEANS",
    "RESUMABLE_FIELDS",
    "with_absent",
    "ConfigError",
    "compile_target",
    "default_compile_config",
    "default_init_config",
    "default_mesh_config",
    "eval_overrides",
    "init_checkpoint",
    "layer_types",
    "load_config",
    "load_config_module",
    "model_family",
    "parse_arg",
    "pretrained_options",
    "resume_conflict",
    "retired_fields",
    "validate",
    "validate_mesh",
]


def validate(config: config_dict.ConfigDict, num_devices: int | None = None):
    """Raises ConfigError for the first invalid field; returns the task (built on the way,
    cheap: pure NumPy) for callers that want it. With `num_devices`, also `validate_mesh`."""
    from sleep_lm.tasks import get_task

    _int(config, "seed", 0)
    _get(config, "task.name")
    steps = _get(config, "task").get("steps", None)
    if steps is not None:
        _int(config, "task.steps", 0)
    _validate_checkpoint_dir(config)
    try:
        task = get_task(config.task)
    except ValueError as e:
        message = str(e)
        raise ConfigError(
            message if message.startswith("config.") else f"config.{message}"
        ) from None
    _validate_model(config)
    _validate_init(config)
    _validate_family(config, task)
    mask = task.eval_batch(1, config.seed)["loss_mask"][0]
    _validate_sleep(config, task.seq_len, mask)
    if hasattr(task, "check_window"):  # variable loss positions (gsm_infinite): all must wake
        try:
            task.check_window(config.sleep.window)
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
    _validate_train(config)
    _validate_eval_generate(config, task)
    _validate_mesh_static(config)
    compile_target(config)
    if num_devices is not None:
        validate_mesh(config, num_devices)
    return task
