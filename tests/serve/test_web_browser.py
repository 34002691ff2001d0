"""The web page in a real headless Chromium against a live server (with an API key).

One browser and one server serve every test here (module and session fixtures): the whole
file should stay within ~30 s of the default run. Each test opens the page afresh with
cleared storage. Screenshots go to reports/web/ (ignored by git); the path is printed.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serve.browser import close_chromium, launch_chromium, screenshot, wait_until
from tests.serve.conftest import assert_no_leak
from tests.serve.test_load import scrape

pytestmark = pytest.mark.usefixtures("web_server")
QUESTION = "Write a short poem about the sea."  # greedy, it runs past 24 tokens: enough to see it stream


@pytest.fixture(scope="module")
def browser():
    driver = launch_chromium()
    yield driver
    close_chromium(driver)


def open_page(driver, server, key: str | None = None, view: str = "chat", storage: dict | None = None,
              size: tuple[int, int] = (1280, 900)) -> None:
    """The page with fresh localStorage holding `key` (and `storage`), ready to use."""
    driver.set_window_size(*size)
    driver.get(server.base_url + "/web/style.css")  # same origin, without running the page's script
    driver.execute_script("""
        localStorage.clear();
        if (arguments[0]) localStorage.setItem('ember.apiKey', arguments[0]);
        for (const [k, v] of Object.entries(arguments[1])) localStorage.setItem(k, v);
    """, key, {k: json.dumps(v) for k, v in (storage or {}).items()})
    driver.get(f"{server.base_url}/#{view}")
    wait_until(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), what="the page script")
    driver.execute_script("""
        window.__errors = [];
        window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
        window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));
    """)


def page_errors(driver) -> list[str]:
    """Script errors: caught in the page, and the console's (a module that fails to load)."""
    console = [e["message"] for e in driver.get_log("browser")
               if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]  # a 401 is expected
    return driver.execute_script("return window.__errors || []") + console


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def set_field(driver, field_id: str, value) -> None:
    js(driver, """const el = document.getElementById(arguments[0]); el.value = arguments[1];
                  el.dispatchEvent(new Event('input'));""", field_id, str(value))


def send(driver, text: str) -> None:
    set_field(driver, "prompt", text)
    driver.find_element("id", "send").click()


def answers(driver) -> int:
    """Finished assistant messages on screen (each gets its stats footer when done)."""
    return js(driver, "return document.querySelectorAll('.message.assistant .answer-stats').length")


def last_answer(driver) -> dict:
    """The last assistant message: its stored text (localStorage) and its stats footer's data."""
    return js(driver, """
        const views = document.querySelectorAll('.message.assistant');
        const view = views[views.length - 1];
        const stats = view.querySelector('.answer-stats');
        const conversation = JSON.parse(localStorage.getItem('ember.conversations') || '[]')[0];
        return {shown: view.querySelector('.content').textContent, stats: stats ? {...stats.dataset} : null,
                stored: conversation ? conversation.messages[conversation.messages.length - 1].content : null};
    """)


def wait_answer(driver, count: int, timeout: float = 60.0) -> dict:
    wait_until(lambda: answers(driver) >= count, timeout, f"answer {count}")
    return last_answer(driver)


def test_page_asks_for_the_key_then_streams_an_answer(browser, web_server):
    open_page(browser, web_server)  # no key stored
    wait_until(lambda: js(browser, "return document.getElementById('key-dialog').open"), what="the key dialog")
    browser.find_element("id", "key-input").send_keys(web_server.api_key)
    browser.find_element("id", "key-save").click()
    wait_until(lambda: browser.find_element("id", "model-name").text == web_server.model, what="the model name")

    set_field(browser, "temperature", 0)
    set_field(browser, "max_tokens", 24)
    # the answer's text as each repaint leaves it: several partial texts mean it streamed
    js(browser, """window.__partials = new Set();
        new MutationObserver(() => {
            const view = document.querySelector('.message.assistant.streaming .content');
            if (view && view.textContent) window.__partials.add(view.textContent);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true});""")
    send(browser, QUESTION)
    answer = wait_answer(browser, 1)
    expected = httpx.post(web_server.base_url + "/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {web_server.api_key}"},
                          json={"messages": [{"role": "user", "content": QUESTION}],
                                "temperature": 0, "max_tokens": 24}).json()
    assert answer["stored"] == expected["choices"][0]["message"]["content"]
    assert answer["shown"].strip()
    stats = answer["stats"]
    assert int(stats["completionTokens"]) == expected["usage"]["completion_tokens"]
    assert int(stats["promptTokens"]) == expected["usage"]["prompt_tokens"]
    assert stats["approximate"] == "false" and float(stats["ttftMs"]) > 0 and float(stats["tokensPerS"]) > 0
    assert stats["finishReason"] == expected["choices"][0]["finish_reason"]
    assert js(browser, "return window.__partials.size") >= 3
    assert browser.find_element("css selector", ".answer-stats").text.count("tok/s") == 1
    screenshot(browser, "chat")
    assert page_errors(browser) == []


def test_settings_reach_the_server_and_seed_repeats_an_answer(browser, web_server):
    open_page(browser, web_server, key=web_server.api_key)
    js(browser, """const fetch0 = window.fetch; window.__bodies = [];
        window.fetch = (url, init) => {
            if (String(url).endsWith('/chat/completions')) window.__bodies.push(JSON.parse(init.body));
            return fetch0(url, init);
        };""")
    settings = {"system": "You are a storyteller.", "temperature": 1.0, "top_p": 0.95, "top_k": 40, "max_tokens": 5,
                "seed": 1234, "stop": "THE END\nFIN"}
    for name, value in settings.items():
        set_field(browser, name, value)
    send(browser, "Tell me a story about a dragon.")
    first = wait_answer(browser, 1)
    assert first["stats"]["completionTokens"] == "5" and first["stats"]["finishReason"] == "length"
    body = js(browser, "return window.__bodies[0]")
    assert body["messages"] == [{"role": "system", "content": "You are a storyteller."},
                                {"role": "user", "content": "Tell me a story about a dragon."}]
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "stream")} == {
        "temperature": 1.0, "top_p": 0.95, "top_k": 40, "max_tokens": 5, "seed": 1234, "stop": ["THE END", "FIN"],
        "stream": True}
    assert body["model"] == web_server.model
    js(browser, "document.querySelector('.message.assistant').dataset.old = 'yes'")  # the view is replaced
    browser.find_element("id", "regenerate").click()  # the same seed: the same sample
    regenerated = "return !!document.querySelector('.message.assistant:not([data-old]) .answer-stats')"
    wait_until(lambda: js(browser, regenerated), 60, "the regenerated answer")
    again = last_answer(browser)
    assert again["stored"] == first["stored"]
    # the conversation survives a reload (localStorage)
    browser.refresh()
    wait_until(lambda: answers(browser) == 1, what="the stored conversation")
    assert last_answer(browser)["stored"] == first["stored"]
    assert page_errors(browser) == []


def test_stop_aborts_the_request_on_the_server(browser, web_server):
    open_page(browser, web_server, key=web_server.api_key)
    # an answer that cannot end early: ask the server to ignore end-of-sequence (test-only)
    js(browser, """const fetch0 = window.fetch;
        window.fetch = (url, init) => {
            if (String(url).endsWith('/chat/completions'))
                init = {...init, body: JSON.stringify({...JSON.parse(init.body), ignore_eos: true})};
            return fetch0(url, init);
        };""")
    set_field(browser, "max_tokens", 3000)
    before = scrape(web_server).get('ember:request_success_total{finished_reason="abort"}', 0)
    send(browser, "Write a very long story.")
    wait_until(lambda: len(js(browser, "return document.querySelector('.message.assistant .content').textContent"))
               > 40, what="some streamed text")
    assert scrape(web_server)["ember:num_requests_running"] == 1
    browser.find_element("id", "stop-generation").click()
    answer = wait_answer(browser, 1, timeout=10)
    assert answer["stats"]["finishReason"] == "stopped" and answer["stats"]["approximate"] == "true"
    wait_until(lambda: scrape(web_server)["ember:num_requests_running"] == 0, 10, "the server to abort")
    m = scrape(web_server)
    assert m['ember:request_success_total{finished_reason="abort"}'] == before + 1
    assert_no_leak(web_server)  # every KV block back in the pool
    assert int(answer["stats"]["completionTokens"]) < 3000
    assert page_errors(browser) == []


def test_model_text_is_shown_as_text_never_html(browser, web_server):
    hostile = ("<img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=2</script>\n\n"
               "**bold** and `<b>code</b>` and [link](javascript:window.__pwned=3) and [ok](https://example.org/)\n\n"
               "```html\n<iframe src=\"javascript:window.__pwned=4\"></iframe>\n```\n- <svg onload=window.__pwned=5>")
    conversation = {"id": "x", "title": "<img src=x onerror=window.__pwned=6>", "created": 0, "messages": [
        {"role": "user", "content": "<b>hi</b>"}, {"role": "assistant", "content": hostile,
                                                    "stats": {"finish_reason": "stop"}}]}
    open_page(browser, web_server, key=web_server.api_key, storage={"ember.conversations": [conversation]})
    wait_until(lambda: answers(browser) == 1, what="the stored conversation")
    found = js(browser, """
        const root = document.querySelector('main');
        return {elements: [...root.querySelectorAll('img, script, iframe, svg, b')].map(e => e.tagName),
                links: [...root.querySelectorAll('.message a')].map(a => a.href),
                strong: root.querySelector('.message strong')?.textContent,
                code: [...root.querySelectorAll('.message code')].map(c => c.textContent),
                text: root.querySelector('.message.assistant').textContent,
                title: document.querySelector('#conversation-list .open').textContent,
                pwned: window.__pwned ?? null};
    """)
    assert found["elements"] == [] and found["pwned"] is None
    assert found["links"] == ["https://example.org/"]
    assert found["strong"] == "bold"
    assert "<b>code</b>" in found["code"] and '<iframe src="javascript:window.__pwned=4"></iframe>' in found["code"]
    assert '<img src=x onerror="window.__pwned=1">' in found["text"] and "[link](javascript:" in found["text"]
    assert found["title"] == conversation["title"]
    assert page_errors(browser) == []


def test_dashboard_moves_under_load_and_polls_only_when_shown(browser, web_server):
    open_page(browser, web_server, key=web_server.api_key, view="dashboard")
    stat = lambda name: browser.find_element("css selector", f'[data-stat="{name}"]').text  # noqa: E731
    wait_until(lambda: browser.find_element("css selector", 'dd[data-config="model"]').text == web_server.model,
               what="the engine configuration")
    assert browser.find_element("css selector", 'dd[data-config="policy"]').text == "fcfs"
    ttft_before = int(stat("ttft_count"))

    def load():
        headers = {"Authorization": f"Bearer {web_server.api_key}"}

        def one(i):
            httpx.post(web_server.base_url + "/v1/completions", headers=headers, timeout=120,
                       json={"prompt": f"Count to {i}:", "max_tokens": 32, "ignore_eos": True})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    loader = threading.Thread(target=load)
    loader.start()
    seen = {"running": 0, "tps": 0.0}

    def moved():
        seen["running"] = max(seen["running"], int(stat("running") or 0))
        tps = stat("generation_tps")
        seen["tps"] = max(seen["tps"], float(tps.rstrip("k")) if tps not in ("", "–") else 0.0)
        return seen["running"] > 0 and seen["tps"] > 0

    wait_until(moved, 30, "running requests and generation tok/s on the dashboard")
    screenshot(browser, "dashboard")
    loader.join()
    wait_until(lambda: int(stat("ttft_count")) >= ttft_before + 4, 10, "the TTFT histogram to count the load")
    wait_until(lambda: stat("running") == "0", 10, "running back to 0")

    # a hidden browser tab, then the chat view: the page stops asking
    js(browser, "window.__shown = []; document.addEventListener('visibilitychange', "
                "() => window.__shown.push([document.visibilityState, performance.now()]))")
    dashboard_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    time.sleep(1.5)
    browser.close()
    browser.switch_to.window(dashboard_tab)
    (hidden, hidden_at), (visible, visible_at) = wait_until(lambda: js(browser, "return window.__shown.length == 2 "
                                                                                "&& window.__shown"))
    assert (hidden, visible) == ("hidden", "visible")
    assert polls_between(browser, hidden_at + 100, visible_at) == 0  # 100 ms: a poll already on its way
    browser.find_element("id", "tab-chat").click()
    switched_at = js(browser, "return performance.now()")
    time.sleep(1.5)
    assert polls_between(browser, switched_at + 100, js(browser, "return performance.now()")) == 0
    assert page_errors(browser) == []


def polls_between(driver, start_ms: float, end_ms: float) -> int:
    return js(driver, """return performance.getEntriesByType('resource')
        .filter(e => e.name.endsWith('/stats.json') && e.startTime > arguments[0] && e.startTime < arguments[1])
        .length""", start_ms, end_ms)


def test_narrow_phone_screen_has_no_sideways_scroll(browser, web_server):
    open_page(browser, web_server, key=web_server.api_key, size=(390, 844))
    assert not js(browser, "return document.getElementById('settings').open")  # folded: room for the chat
    for view in ("chat", "dashboard"):
        browser.find_element("id", f"tab-{view}").click()
        overflow = js(browser, "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{view}: {overflow} px wider than a 390 px screen"
        screenshot(browser, f"{view}-phone")
    assert page_errors(browser) == []
