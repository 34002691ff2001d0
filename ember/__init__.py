"""Ember: a readable, efficient LLM inference engine."""

__version__ = "0.1.0"
