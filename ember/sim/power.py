"""Power per replica state and power caps (SplitwiseSim's per-state power; POLCA's capping).

A replica draws `idle` watts when it has no step in flight, `prefill` during a step that computes
prompt tokens and `decode` during a decode-only step. Under a cap below a state's power the step
draws the cap and runs longer: its time is multiplied by (state watts / cap) ** sensitivity. With
power roughly proportional to clock frequency, a compute-bound phase (prefill) slows in proportion
(sensitivity 1); a memory-bound one (decode) slows less (POLCA measured LLM token phases losing
little under caps): sensitivity 0.5 by default. The watts and sensitivities are inputs: measure
them on the machine being modelled (this repository's machine has no power counters).
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("idle", "prefill", "decode")


@dataclass(frozen=True)
class PowerModel:
    idle_w: float
    prefill_w: float
    decode_w: float
    cap_w: float = 0.0  # 0: no cap
    prefill_sensitivity: float = 1.0
    decode_sensitivity: float = 0.5

    def __post_init__(self):
        if min(self.idle_w, self.prefill_w, self.decode_w, self.cap_w) < 0:
            raise ValueError("power figures must not be negative")
        if self.cap_w and self.cap_w < self.idle_w:
            raise ValueError(f"a {self.cap_w:g} W cap is below the {self.idle_w:g} W idle power")

    def step(self, seconds: float, prefill_tokens: int) -> tuple[float, float]:
        """A step's (duration, watts) under the cap."""
        watts, sensitivity = ((self.prefill_w, self.prefill_sensitivity) if prefill_tokens
                              else (self.decode_w, self.decode_sensitivity))
        if self.cap_w and watts > self.cap_w:
            return seconds * (watts / self.cap_w) ** sensitivity, self.cap_w
        return seconds, watts


def parse_power(text: str, cap_w: float = 0.0, sensitivity: str = "") -> PowerModel:
    """'idle=100,prefill=400,decode=300' (watts) and 'prefill=1,decode=0.5' -> a PowerModel."""
    def pairs(s: str, flag: str) -> dict[str, float]:
        out = {}
        for item in filter(None, (x.strip() for x in s.split(","))):
            name, sep, value = item.partition("=")
            try:
                out[name.strip()] = float(value)
                if not sep:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{flag}: {item!r} is not NAME=NUMBER") from None
        return out

    watts = pairs(text, "--power")
    if set(watts) != set(STATES):
        raise ValueError(f"--power needs idle=W,prefill=W,decode=W, got {text!r}")
    sens = pairs(sensitivity, "--cap-sensitivity")
    if set(sens) - {"prefill", "decode"}:
        raise ValueError(f"--cap-sensitivity takes prefill=X,decode=Y, got {sensitivity!r}")
    return PowerModel(watts["idle"], watts["prefill"], watts["decode"], cap_w,
                      sens.get("prefill", 1.0), sens.get("decode", 0.5))


def energy_report(replicas, duration: float, output_tokens: int, power: PowerModel) -> dict:
    """The run's energy in the shape `ember bench` reports measured energy (plus per-state time)."""
    busy = sum(r.busy_s for r in replicas)
    joules = sum(r.energy_j for r in replicas) + power.idle_w * max(0.0, len(replicas) * duration - busy)
    return {"available": True, "source": "ember sim power model", "joules": joules,
            "joules_per_output_token": joules / output_tokens if output_tokens else None,
            "mean_watts_per_replica": joules / (len(replicas) * duration) if duration else 0.0,
            "prefill_s": sum(r.prefill_s for r in replicas), "decode_s": busy - sum(r.prefill_s for r in replicas),
            "cap_w": power.cap_w}
