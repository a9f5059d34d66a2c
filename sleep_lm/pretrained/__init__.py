"""Pretrained model families loaded from and saved to Hugging Face checkpoints (issue 10).

`load_hf(path, **options) -> (model, params)` and `save_hf(model, params, path)`; families
register themselves in `registry.FAMILIES` when their module is imported below.
"""

from sleep_lm.pretrained.registry import FAMILIES, Family, for_model_type, for_name, register

__all__ = ["FAMILIES", "Family", "for_model_type", "for_name", "register"]
