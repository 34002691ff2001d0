"""Scheduling policies, registered by name. The scheduler asks; the policy decides order, admission and victims."""

from ember.engine.policies.base import POLICIES, Admission, Policy, PreemptReason, SchedulerView
from ember.engine.policies import batchllm, continuum, fcfs, lpm, past_future, priority, slo, vtc  # noqa: F401  (registers each by name)

__all__ = ["POLICIES", "Admission", "Policy", "PreemptReason", "SchedulerView"]
