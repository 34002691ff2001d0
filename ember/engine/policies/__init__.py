"""Scheduling policies, registered by name. The scheduler asks; the policy decides order and victims."""

from ember.engine.policies.base import POLICIES, Policy
from ember.engine.policies import fcfs  # noqa: F401  (registers "fcfs")

__all__ = ["POLICIES", "Policy"]
