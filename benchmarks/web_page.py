"""The web page of `ember serve` (issue 22): its weight, its first paint, its dashboard's cost.

Starts a real `ember serve` and Debian's headless Chromium (selenium + chromedriver, as the
tests do) and measures:

* page weight: bytes transferred on a first load with an empty cache (Resource Timing's
  transferSize: bodies plus response headers), per file;
* first-contentful-paint (Paint Timing) over --loads cold loads (cache disabled), median;
* the dashboard's polling cost on the server: polls per second while it is shown, and the
  server process's CPU time per poll, two ways: (a) the dashboard open for --window seconds
  against the same window on the chat view (no polls), (b) --requests back-to-back GETs of
  /stats.json (finer: /proc's CPU clock ticks are 10 ms); both against the time of one
  decode step (single stream, --decode-tokens tokens, ignore_eos, median inter-token gap)
  and the server CPU time per decode step.

On a shared machine every timing is indicative only.

    .venv/bin/python benchmarks/web_page.py --output benchmarks/results/web_page.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log, write_json  # noqa: E402
from servers import free_port, stop, wait_ready  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='ember-bench-')}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def wait_ready_page(driver, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script("return document.body && document.body.dataset.ready === 'true'"):
        if time.monotonic() > deadline:
            raise SystemExit("the page did not become ready")
        time.sleep(0.02)


def page_weight(driver, base: str) -> dict:
    driver.get(base + "/")  # the profile is fresh: nothing cached
    wait_ready_page(driver)
    time.sleep(0.5)  # let /v1/models finish
    entries = driver.execute_script("""
        return [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
            .map(e => ({name: e.name, transfer: e.transferSize, body: e.encodedBodySize}));""")
    files = {e["name"].replace(base, "") or "/": {"transfer_bytes": e["transfer"], "body_bytes": e["body"]}
             for e in entries}
    static = {k: v for k, v in files.items() if not k.startswith("/v1")}
    return {"files": files,
            "static_transfer_bytes": sum(v["transfer_bytes"] for v in static.values()),
            "static_body_bytes": sum(v["body_bytes"] for v in static.values()),
            "total_transfer_bytes": sum(v["transfer_bytes"] for v in files.values())}


def first_paints(driver, base: str, loads: int) -> dict:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    fcp, dcl = [], []
    for _ in range(loads):
        driver.get("about:blank")
        driver.get(base + "/")
        wait_ready_page(driver)
        for _ in range(100):
            paint = driver.execute_script(
                "return performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
            if paint is not None:
                break
            time.sleep(0.02)
        fcp.append(paint)
        dcl.append(driver.execute_script(
            "return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    return {"first_contentful_paint_ms": {"median": statistics.median(fcp), "all": fcp},
            "dom_content_loaded_ms": {"median": statistics.median(dcl), "all": dcl}}


def count_polls(driver) -> int:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/stats.json')).length")


def dashboard_window(driver, base: str, pid: int, window: float) -> dict:
    """Server CPU with the dashboard shown for `window` s, against the same time on the chat view."""
    driver.get(base + "/#chat")
    wait_ready_page(driver)
    time.sleep(1.0)
    c0 = cpu_seconds(pid)
    time.sleep(window)
    idle_cpu = cpu_seconds(pid) - c0

    driver.find_element("id", "tab-dashboard").click()
    time.sleep(1.5)  # the first polls, and the charts' first draw
    p0, c0, t0 = count_polls(driver), cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    polls, cpu, elapsed = count_polls(driver) - p0, cpu_seconds(pid) - c0, time.monotonic() - t0
    driver.find_element("id", "tab-chat").click()
    return {"window_s": elapsed, "polls": polls, "polls_per_s": polls / elapsed,
            "server_cpu_s_dashboard": cpu, "server_cpu_s_no_dashboard": idle_cpu,
            "server_cpu_ms_per_poll": 1000 * max(0.0, cpu - idle_cpu) / max(1, polls),
            "server_cpu_share_while_open": max(0.0, cpu - idle_cpu) / elapsed}


def stats_requests(base: str, pid: int, n: int) -> dict:
    with httpx.Client(base_url=base, timeout=10) as client:
        size = len(client.get("/stats.json").content)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(n):
            client.get("/stats.json").raise_for_status()
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    return {"requests": n, "response_bytes": size, "wall_ms_per_request": 1000 * wall / n,
            "server_cpu_ms_per_request": 1000 * cpu / n}


def decode_step(base: str, pid: int, tokens: int) -> dict:
    body = {"prompt": "Once upon a time", "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "temperature": 0}
    stamps = []
    c0 = cpu_seconds(pid)
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.perf_counter())
    cpu = cpu_seconds(pid) - c0
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"tokens": len(stamps), "median_step_ms": 1000 * statistics.median(gaps),
            "server_cpu_ms_per_token": 1000 * cpu / max(1, len(stamps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loads", type=int, default=5, help="cold loads for first paint (default 5)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds the dashboard is watched (default 20)")
    parser.add_argument("--requests", type=int, default=300, help="back-to-back /stats.json GETs (default 300)")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--serve-args", default="", help="more `ember serve` options, e.g. '--dtype bf16'")
    parser.add_argument("--output", default=None, help="JSON report (e.g. benchmarks/results/web_page.json)")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logfile = tempfile.NamedTemporaryFile(prefix="ember-serve-", suffix=".log", delete=False).name
    cmd = [os.path.join(os.path.dirname(sys.executable), "ember"), "serve", "--port", str(port),
           "--threads", str(args.threads), "--log-level", "warning", *args.serve_args.split()]
    log(f"starting {' '.join(cmd)} (log: {logfile})")
    with open(logfile, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    driver = None
    try:
        wait_ready(proc, base + "/health", logfile)
        decode_step(base, proc.pid, 8)  # warm up
        driver = chromium()
        log("page weight (first load, empty cache)")
        weight = page_weight(driver, base)
        log(f"first paint over {args.loads} cold loads")
        paint = first_paints(driver, base, args.loads)
        log(f"dashboard open {args.window:.0f} s vs closed {args.window:.0f} s")
        window = dashboard_window(driver, base, proc.pid, args.window)
        log(f"{args.requests} back-to-back /stats.json requests")
        direct = stats_requests(base, proc.pid, args.requests)
        log(f"one stream of {args.decode_tokens} tokens")
        decode = decode_step(base, proc.pid, args.decode_tokens)
        config = httpx.get(base + "/stats.json").json()["config"]
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)

    report = {
        "what": "web page of ember serve: weight, first paint, dashboard polling cost (shared machine: indicative)",
        "command": " ".join(sys.argv),
        "config": config, "page_weight": weight, "paint": paint, "dashboard_window": window,
        "stats_json_requests": direct, "decode": decode,
        "poll_cpu_vs_decode_step": direct["server_cpu_ms_per_request"] / decode["median_step_ms"],
        "loadavg": os.getloadavg(),
    }
    print(json.dumps({k: report[k] for k in ("paint", "dashboard_window", "stats_json_requests", "decode",
                                             "poll_cpu_vs_decode_step")}, indent=2))
    print(f"page weight: {weight['static_transfer_bytes']} bytes transferred for the page's files "
          f"({weight['static_body_bytes']} bytes of bodies), {weight['total_transfer_bytes']} with /v1/models")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
