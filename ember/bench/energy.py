"""Energy counters: RAPL (Linux powercap) or NVML (NVIDIA GPUs), read before and after a run.

Only measured joules are ever reported. Where no counter can be read (no powercap zones, zones
readable only by root, no NVML), the result says "not available" and why. RAPL measures the
whole CPU package, so a server on the same machine and everything else running there count too.
"""

from __future__ import annotations

import glob
import os

POWERCAP = "/sys/class/powercap"


def _rapl_zones() -> list[str]:
    """Top-level package zones (intel-rapl:0, ...); their subzones (core, dram) are inside them."""
    return sorted(z for z in glob.glob(os.path.join(POWERCAP, "intel-rapl:*")) if z.count(":") == 1)


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


class EnergyMeter:
    """`start()` then `stop()` -> dict with available, joules, source (or reason)."""

    def __init__(self):
        self.source, self.reason, self._begin = None, "", None
        self._nvml = None
        zones = _rapl_zones()
        if zones:
            try:
                self._begin = [_read_int(os.path.join(z, "energy_uj")) for z in zones]
                self.source, self._zones = "RAPL (" + ", ".join(os.path.basename(z) for z in zones) + ")", zones
            except (OSError, ValueError) as exc:
                self.reason = f"RAPL counters not readable: {exc}"
        if self.source is None:
            self._try_nvml()
        if self.source is None and not self.reason:
            self.reason = f"no RAPL zones under {POWERCAP} and no NVML"

    def _try_nvml(self) -> None:
        try:
            import pynvml  # optional; present only where NVIDIA's bindings are installed
            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            self._nvml = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            self._nvml_read = lambda: [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._nvml]  # mJ
            self._nvml_read()
            self.source = f"NVML ({n} GPU{'s' if n != 1 else ''})"
        except Exception as exc:  # no module, no driver, no energy support: all mean "not available"
            self._nvml = None
            if not self.reason:
                self.reason = f"no RAPL zones under {POWERCAP}; NVML: {type(exc).__name__}"

    def start(self) -> None:
        if self._nvml is not None:
            self._begin = self._nvml_read()
        elif self.source is not None:
            self._begin = [_read_int(os.path.join(z, "energy_uj")) for z in self._zones]

    def stop(self, output_tokens: int = 0) -> dict:
        if self.source is None or self._begin is None:
            return {"available": False, "reason": self.reason}
        try:
            if self._nvml is not None:
                joules = sum(b - a for a, b in zip(self._begin, self._nvml_read())) / 1e3
            else:
                joules = 0.0
                for z, a in zip(self._zones, self._begin):
                    b = _read_int(os.path.join(z, "energy_uj"))
                    if b < a:  # the counter wrapped around its range
                        b += _read_int(os.path.join(z, "max_energy_range_uj"))
                    joules += (b - a) / 1e6
        except (OSError, ValueError) as exc:
            return {"available": False, "reason": f"{self.source} read failed: {exc}"}
        out = {"available": True, "source": self.source, "joules": joules}
        out["joules_per_output_token"] = joules / output_tokens if output_tokens else None
        return out
