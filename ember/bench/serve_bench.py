"""One `ember bench serve` invocation: build the workload once, run it at each swept rate or
concurrency, and collect the figures, energy and per-request records into one report."""

from __future__ import annotations

import asyncio
import math
import sys

from ember.bench.energy import EnergyMeter
from ember.bench.fairness import fairness
from ember.bench.metrics import compute_metrics
from ember.bench.online import ClientConfig, run_sessions
from ember.bench.report import new_report
from ember.bench.workloads import Session, WorkloadSpec, workload_summary


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=not enabled, leave=False)


def run_serve_benchmark(cfg: ClientConfig, spec: WorkloadSpec, sessions: list[Session], tokenizer,
                        rates: list[float], concurrencies: list[int | None], slos: dict[str, float],
                        label: str, progress: bool = True, keep_text: bool = False) -> dict:
    """Run `sessions` once per (rate, concurrency) point, one after the other, into a report dict."""
    from dataclasses import asdict, replace

    summary = workload_summary(sessions)
    report = new_report("serve", label, base_url=cfg.base_url, endpoint=cfg.endpoint,
                        workload=asdict(spec), workload_summary=summary, ignore_eos=cfg.ignore_eos,
                        temperature=cfg.temperature, extra_body=cfg.extra_body, goodput_slos_ms=slos)
    for rate in rates:
        for conc in concurrencies:
            point = replace(cfg, request_rate=rate, max_concurrency=conc)
            rate_txt = "inf" if math.isinf(rate) else f"{rate:g}"
            bar = _progress(summary["requests"], f"rate={rate_txt}" + (f" conc={conc}" if conc else ""), progress)
            meter = EnergyMeter()
            meter.start()
            try:
                results, duration = asyncio.run(run_sessions(point, sessions, tokenizer, on_done=lambda r: bar.update(1)))
            finally:
                bar.close()
            metrics = run_metrics(results, duration, slos)
            metrics["energy"] = meter.stop(metrics["total_output_tokens"])
            report["model"] = point.model  # as the server named it
            report["runs"].append({"request_rate": rate, "max_concurrency": conc, "metrics": metrics,
                                   "requests": [r.to_json(keep_text) for r in results]})
    return report


def run_metrics(results, duration: float, slos: dict[str, float]) -> dict:
    """A run's figures as reports hold them: compute_metrics, plus each tenant's share and
    fairness (multi-tenant), plus job completion times (conversations, agent programs)."""
    metrics = compute_metrics(results, duration, slos)
    users = sorted({r.user for r in results if r.user is not None})
    if users:  # multi-tenant: each tenant's share, for fairness comparisons
        metrics["per_user"] = {u: _brief(compute_metrics([r for r in results if r.user == u], duration, slos))
                               for u in users}
        metrics["fairness"] = fairness(results)
    if any(r.turn for r in results):  # conversations / agent programs: job completion time
        metrics["jobs"] = job_metrics(results)
    return metrics


def _brief(m: dict) -> dict:
    keep = ("completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput", "output_throughput")
    out = {k: m[k] for k in keep}
    out.update(ttft_ms_mean=m["ttft_ms"]["mean"], ttft_ms_p99=m["ttft_ms"]["p99"], e2el_ms_mean=m["e2el_ms"]["mean"])
    if "goodput" in m:
        out["request_goodput"] = m["goodput"]["request_goodput"]
    return out


def job_metrics(results) -> dict:
    """A session's job completion time: its first turn sent to its last turn's end (tool and
    think pauses included); only sessions whose every turn succeeded."""
    from ember.bench.metrics import summarize

    by_session: dict[int, list] = {}
    for r in results:
        by_session.setdefault(r.session, []).append(r)
    done = [rs for rs in by_session.values() if all(r.success for r in rs)]
    jct = [max(r.end for r in rs) - min(r.start for r in rs) for rs in done]
    return {"completed": len(done), "failed": len(by_session) - len(done), "jct_s": summarize(jct)}
