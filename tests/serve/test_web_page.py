"""The web page's server side without a browser: public files, /stats.json, package data."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from ember.serve.web_page import WEB_DIR
from tests.serve.browser import launch_chromium
from tests.serve.test_load import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_page_and_files_need_no_key_but_the_api_does(web_server):
    base = web_server.base_url
    page = httpx.get(base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/web/app.js">' in page.text
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css"), ("markdown.js", "javascript")]:
        r = httpx.get(f"{base}/web/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert r.headers["cache-control"] == "no-cache"
    assert httpx.get(base + "/web/nope.js").status_code == 404
    assert httpx.get(base + "/web/../server.py").status_code == 404
    assert httpx.get(base + "/stats.json").status_code == 200  # public, like /metrics
    assert httpx.get(base + "/v1/models").status_code == 401


def test_stats_json_counts_a_request(web_server):
    base = web_server.base_url
    before = httpx.get(base + "/stats.json").json()
    config = before["config"]
    engine = web_server.engine
    assert config["model"] == web_server.model
    assert (config["dtype"], config["linear"], config["policy"]) == (engine.config.dtype, engine.config.linear, "fcfs")
    assert config["kv_codec"].endswith("(auto)") and config["num_blocks"] == engine.num_blocks
    assert len(before["latency"]["ttft"]["counts"]) == len(before["latency"]["ttft"]["le"])
    assert before["latency"]["ttft"]["le"][-1] is None  # +Inf
    r = httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {web_server.api_key}"},
                   json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "ignore_eos": True},
                   timeout=60)
    assert r.status_code == 200
    after = httpx.get(base + "/stats.json").json()
    assert after["tokens"]["generation"] == before["tokens"]["generation"] + 4
    assert after["tokens"]["prompt"] > before["tokens"]["prompt"]
    assert after["latency"]["ttft"]["count"] == before["latency"]["ttft"]["count"] + 1
    assert after["latency"]["itl"]["count"] == before["latency"]["itl"]["count"] + 3
    assert sum(after["latency"]["itl"]["counts"]) == after["latency"]["itl"]["count"]
    assert after["requests"]["finished"].get("length", 0) == before["requests"]["finished"].get("length", 0) + 1
    assert after["prefix_cache"]["queries"] > before["prefix_cache"]["queries"]
    assert after["requests"]["running"] == 0 and after["kv_cache"]["used_blocks"] == 0


def test_the_page_ships_as_package_data():
    """A non-editable install copies only what package-data names: every file of web/ must match."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["ember.serve"]
    files = sorted(p.name for p in WEB_DIR.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(files)
    for name in files:
        assert any(Path("web", name).match(p) for p in patterns), f"web/{name} is not package data"
    # every file the page loads exists (a missing module would break the page, not the server)
    index = (WEB_DIR / "index.html").read_text()
    for name in ("style.css", "app.js"):
        assert f"/web/{name}" in index
    for js in WEB_DIR.glob("*.js"):
        for target in re.findall(r'from\s+"\./([^"]+)"', js.read_text()):
            assert (WEB_DIR / target).is_file(), f"{js.name} imports {target}"


def test_dashboard_polls_stay_out_of_the_info_log(web_server, caplog):
    with caplog.at_level(logging.DEBUG, logger="ember.access"):
        httpx.get(web_server.base_url + "/stats.json")
        httpx.get(web_server.base_url + "/version")
        wait_for(lambda: any('"GET /version"' in r.getMessage() for r in caplog.records), timeout=10)
        wait_for(lambda: any('"GET /stats.json"' in r.getMessage() for r in caplog.records), timeout=10)
    levels = {r.getMessage().split('"')[1]: r.levelno for r in caplog.records if r.name == "ember.access"}
    assert levels["GET /stats.json"] == logging.DEBUG and levels["GET /version"] == logging.INFO


def test_no_browser_fails_saying_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("EMBER_CHROMIUM", raising=False)
    monkeypatch.delenv("EMBER_CHROMEDRIVER", raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium chromium-driver"):
        launch_chromium()
