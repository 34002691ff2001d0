"""`ember sim`: a discrete-event cluster simulator that drives the engine's real Scheduler, KV
manager and policies with a step-time model calibrated from the engine's own step profiles.
The engine never imports this package."""
