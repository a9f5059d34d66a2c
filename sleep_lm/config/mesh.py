"""`config.mesh` and `config.compile.target`: the devices a run is laid out on, or compiled
for. `validate` checks what needs no device (sizes, rules, the target's name);
`validate_mesh(config, num_devices)` checks the sizes against the devices, the batch against
the batch axes and the heads against the tensor axis."""

from ml_collections import config_dict

from sleep_lm import compile_targets, parallel
from sleep_lm.config.family import MODEL_FAMILY_DEFAULT, _pretrained_config, model_family
from sleep_lm.config.fields import ConfigError, _int


def compile_target(config):
    """The `compile_targets.Target` of `config.compile.target`; None when it is "" (or the
    config has no `compile` section). Raises ConfigError naming the field for a bad name."""
    name = (config.get("compile", None) or {}).get("target", "")
    if not isinstance(name, str):
        raise ConfigError(f"config.compile.target must be a string (got {name!r})")
    if not name:
        return None
    try:
        return compile_targets.parse_target(name)
    except compile_targets.TargetError as e:
        raise ConfigError(str(e)) from None


def _validate_mesh_static(config) -> None:
    try:
        parallel.check_mesh_config(parallel.mesh_config(config))
    except parallel.MeshError as e:
        raise ConfigError(str(e)) from None


def validate_mesh(config: config_dict.ConfigDict, num_devices: int) -> dict[str, int]:
    """Checks `config.mesh` against `num_devices`; returns the resolved {axis: size}.

    Raises ConfigError (one line naming the field) when the sizes do not multiply to the
    device count, when train.batch_size or train.eval_size is not a multiple of the batch
    axes (data x fsdp by default), or a head count not a multiple of the heads axes (tensor):
    `model.heads` of the hybrid, the checkpoint's heads, KV heads and Jet heads of a
    pretrained family.
    """
    mesh_cfg = parallel.mesh_config(config)
    try:
        rules = dict(parallel.parse_rules(mesh_cfg.get("rules", None)))
        sizes = parallel.mesh_shape(mesh_cfg, num_devices)
    except parallel.MeshError as e:
        raise ConfigError(str(e)) from None

    def axes_text(logical):
        """'mesh.data=4 x mesh.fsdp=2 = 8', or 'mesh.tensor=8' for one axis."""
        axes = rules[logical]
        text = " x ".join(f"mesh.{a}={sizes[a]}" for a in axes)
        return text if len(axes) == 1 else f"{text} = {parallel.axes_size(sizes, axes)}"

    shards = parallel.axes_size(sizes, rules["batch"])
    for field in ("batch_size", "eval_size"):
        value = _int(config, f"train.{field}", 1)
        if value % shards:
            raise ConfigError(
                f"config.train.{field}={value} must be a multiple of the batch axes "
                f"{axes_text('batch')} (mesh.rules.batch)"
            )
    micro = config.train.get("microbatches", 1)
    if (config.train.batch_size // micro) % shards:
        raise ConfigError(
            f"config.train.microbatches={micro}: each microbatch of "
            f"{config.train.batch_size // micro} rows must be a multiple of the batch axes "
            f"{axes_text('batch')} (mesh.rules.batch)"
        )
    for field, heads in _head_counts(config).items():
        if heads % parallel.axes_size(sizes, rules["heads"]):
            raise ConfigError(
                f"{field}={heads} must be a multiple of the heads axes "
                f"{axes_text('heads')} (mesh.rules.heads)"
            )
    return sizes


def _head_counts(config) -> dict[str, int]:
    """{where it comes from: count} of every head axis the mesh's heads axes split: the
    hybrid's `model.heads`; a pretrained family's attention heads, KV heads and Jet heads,
    read from init.from_hf's config.json (no model built)."""
    if model_family(config) == MODEL_FAMILY_DEFAULT:
        return {"config.model.heads": _int(config, "model.heads", 1)}
    cfg = _pretrained_config(config)
    where = f"config.init.from_hf={config.init.from_hf!r}: config.json"
    counts = {
        f"{where} num_attention_heads": cfg.heads,
        f"{where} num_key_value_heads": cfg.kv_heads,
    }
    if "jet" in cfg.layers:
        counts[f"{where} Jet layers' num_heads"] = cfg.jet_heads
    return counts
