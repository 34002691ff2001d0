"""Ember: a readable, efficient LLM inference engine."""

__version__ = "0.1.0"

from ember.config import EngineConfig  # noqa: E402
from ember.engine.outputs import CompletionOutput, RequestOutput  # noqa: E402
from ember.sampling_params import SamplingParams  # noqa: E402
from ember.llm import LLM  # noqa: E402

__all__ = ["LLM", "SamplingParams", "EngineConfig", "RequestOutput", "CompletionOutput", "__version__"]
