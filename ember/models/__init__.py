"""Model definitions, registered by architecture name."""

from ember.models.config import ModelConfig
from ember.models.llama import LlamaForCausalLM
from ember.registry import Registry

MODELS: Registry = Registry("model architecture")
MODELS.register("llama")(LlamaForCausalLM)

__all__ = ["MODELS", "ModelConfig", "LlamaForCausalLM"]
