"""Power per state and power caps: energy adds up from the states' watts and times, a cap
stretches the steps whose state draws more than it, and bad flags are clear errors."""

from __future__ import annotations

import pytest

from ember.config import EngineConfig
from ember.sim.power import PowerModel, energy_report, parse_power
from ember.sim.simulator import Capacity, Simulator
from ember.sim.workload import SimSession, SimTurn


def step_time(prefill: int, decode: int, context: int, seqs: int, attention: int = 0) -> float:
    return 0.01 + 1e-4 * prefill + 2e-3 * decode


def one_request(power: PowerModel, arrival: float = 1.0):
    sim = Simulator(EngineConfig(), Capacity(64, 16, 4096), step_time, [SimSession(arrival, [SimTurn(100, 5)])],
                    power=power)
    (r,), duration, _ = sim.run()
    return sim, r, duration


def test_energy_is_each_state_s_watts_times_its_time():
    power = PowerModel(idle_w=50, prefill_w=400, decode_w=300)
    sim, r, duration = one_request(power)
    prefill_s, decode_s = step_time(100, 0, 100, 1), 4 * step_time(0, 1, 0, 1)
    assert r.ttft == pytest.approx(prefill_s)
    e = energy_report(sim.replicas, duration, 5, power)
    assert (e["prefill_s"], e["decode_s"]) == (pytest.approx(prefill_s), pytest.approx(decode_s))
    idle = duration - prefill_s - decode_s  # the second before the request arrived, and nothing after
    assert e["joules"] == pytest.approx(400 * prefill_s + 300 * decode_s + 50 * idle)
    assert e["joules_per_output_token"] == pytest.approx(e["joules"] / 5)


def test_a_cap_stretches_only_the_states_above_it():
    _, base, _ = one_request(PowerModel(50, 400, 300))
    _, capped, _ = one_request(PowerModel(50, 400, 300, cap_w=320))  # prefill is capped, decode is not
    assert capped.ttft == pytest.approx(base.ttft * 400 / 320)
    assert capped.itl == pytest.approx(base.itl)
    _, low, _ = one_request(PowerModel(50, 400, 300, cap_w=250, decode_sensitivity=0.5))
    assert low.itl == pytest.approx([g * (300 / 250) ** 0.5 for g in base.itl])
    sim, _, duration = one_request(PowerModel(50, 400, 300, cap_w=250))
    busy = sim.replicas[0].busy_s
    assert energy_report(sim.replicas, duration, 5, sim.replicas[0].power)["joules"] == \
        pytest.approx(250 * busy + 50 * (duration - busy))  # every step draws the cap


@pytest.mark.parametrize("power, cap, sens, message", [
    ("idle=1,prefill=2", 0, "", "needs idle=W,prefill=W,decode=W"),
    ("idle=1,prefill=x,decode=3", 0, "", "'prefill=x' is not NAME=NUMBER"),
    ("idle=100,prefill=400,decode=300", 50, "", "below the 100 W idle power"),
    ("idle=100,prefill=400,decode=300", 0, "memory=1", "--cap-sensitivity takes prefill=X,decode=Y"),
])
def test_bad_power_flags(power, cap, sens, message):
    with pytest.raises(ValueError, match=message):
        parse_power(power, cap, sens)
