"""`/dashboard` in a real headless browser (Debian's chromium, driven by Playwright) against
the shared `raylm serve` of two replicas: the page opens with the key, shows both replicas
and the node, its charts move while requests flow, the chat box streams an answer, and a
killed replica shows within seconds (the test waits for it to come back, leaving the
server as it found it). The screenshot is kept in $RAYLM_TEST_ARTIFACTS (default
.test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import Served

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("RAYLM_TEST_ARTIFACTS", Path(__file__).parents[2] / ".test-artifacts")
)


@pytest.fixture
def page(served: Served) -> Iterator[Page]:
    assert Path(CHROMIUM).exists(), "no chromium: `make test` installs Debian's (apt-get)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1250})
        try:
            yield page
        finally:
            browser.close()


def _last(page: Page, chart: str) -> dict[str, float | None]:
    raw = page.get_attribute(f"#chart-{chart}", "data-last")
    return json.loads(raw) if raw else {}


def _wait(what: str, ok: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.25)


def _replicas(served: Served) -> list[dict[str, object]]:
    with served.client(timeout=10) as c:
        return c.get("/").json()["replicas"]  # type: ignore[no-any-return]


def test_the_dashboard_shows_the_deployment_live_and_a_killed_replica(
    served: Served, page: Page
) -> None:
    page.goto(f"{served.base_url}/dashboard#key={served.api_key}")
    assert "#key=" not in page.url  # the key leaves the address bar
    rows = page.locator("#replicas tbody tr")
    _wait(
        "both replicas shown ready",
        lambda: rows.count() == 2 and page.locator('#replicas tr[data-state="ready"]').count() == 2,
        15,
    )
    assert page.inner_text("#status") == "ready"
    _wait("the node shown", lambda: "CPUs" in page.inner_text("#nodes"), 60)

    # Requests flowing move the charts.
    done = threading.Event()

    def load() -> None:
        # Streams: TTFT is measured on them (a whole answer's first token is not seen).
        body = {"prompt": "Count to ten:", "max_tokens": 12, "ignore_eos": True, "stream": True}
        with served.client(timeout=120) as c:
            while not done.is_set():
                with c.stream("POST", "/v1/completions", json=body) as r:
                    r.read()

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        _wait("requests/s above 0", lambda: (_last(page, "rps").get("requests/s") or 0) > 0, 30)
        _wait(
            "output tokens/s above 0", lambda: (_last(page, "tokens").get("tokens/s") or 0) > 0, 30
        )
        _wait("a TTFT p50", lambda: _last(page, "ttft").get("p50") is not None, 30)
        kv = _last(page, "kv")
        assert len(kv) == 2 and all(v is not None and v >= 0 for v in kv.values()), kv

        # The chat box streams its answer.
        page.fill("#prompt", "What is the capital of France?")
        page.click("#chat button")
        _wait(
            "the streamed answer", lambda: page.get_attribute("#answer", "data-done") == "true", 120
        )
        assert int(page.get_attribute("#answer", "data-chunks") or 0) >= 2
        assert page.inner_text("#answer").strip() and "error" not in page.inner_text("#answer")
        # Some history on the charts for the screenshot (one point every 2 s).
        _wait(
            "20 s of charts",
            lambda: int(page.get_attribute("#chart-rps", "data-points") or 0) >= 10,
            60,
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    finally:
        done.set()
        for w in workers:
            w.join(180)

    # A killed replica shows within seconds: its row and an event. Whatever happens, the
    # test waits for it to come back: the shared server's other tests need both.
    engines = served.engine_pids()
    assert len(engines) == 2
    os.kill(engines[-1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        _wait(
            "a replica shown not ready",
            lambda: page.locator('#replicas tr[data-state="ready"]').count() == 1,
            60,
        )
        shown_after = time.monotonic() - killed_at
        kinds = '#events li[data-kind="not-ready"], #events li[data-kind="restarted"]'
        _wait("its event", lambda: page.locator(kinds).count() >= 1, 10)
        print(f"the killed replica was shown not ready {shown_after:.1f} s after the kill")
        page.screenshot(path=str(ARTIFACTS / "dashboard-replica-killed.png"), full_page=True)
    finally:
        states = lambda: [r["state"] for r in _replicas(served)]  # noqa: E731
        _wait(f"the replica back (now {states()})", lambda: states() == ["ready", "ready"], 600)
