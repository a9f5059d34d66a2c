"""The hybrid attention + Gated DeltaNet model (Flax Linen, explicit state)."""

from sleep_lm.model.config import ModelConfig
from sleep_lm.model.hybrid import HybridLM, build_model
from sleep_lm.model.state import FastWeightState, KVCache, ModelState

__all__ = ["FastWeightState", "HybridLM", "KVCache", "ModelConfig", "ModelState", "build_model"]
