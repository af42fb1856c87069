"""API key on: every route but /health needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import openai
import pytest
from gateway_harness import MODEL, RunningGateway, replica

KEY = "sk-raylm-test-7f3c9a"
ROUTES = [
    ("GET", "/"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/generate"),
    ("POST", "/batch_generate"),
    ("GET", "/dashboard/events"),
    ("GET", "/dashboard/nodes"),
]


@pytest.fixture(scope="module")
def keyed(replica_url: str) -> Iterator[RunningGateway]:
    with RunningGateway([replica(replica_url)], api_key=KEY) as g:
        yield g


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {KEY}", "Bearer"])
def test_refused_without_the_key(
    keyed: RunningGateway, method: str, path: str, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    with keyed.client(headers=headers) as c:
        r = c.request(method, path, json={"prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in r.text


def test_health_needs_no_key(keyed: RunningGateway) -> None:
    with keyed.client() as c:
        assert c.get("/health").status_code == 200


def test_the_dashboard_page_loads_without_a_key_and_holds_no_data(keyed: RunningGateway) -> None:
    files = {
        "/dashboard": "text/html",
        "/dashboard/dashboard.js": "text/javascript",
        "/dashboard/dashboard.css": "text/css",
        "/dashboard/vendor/uPlot.iife.min.js": "text/javascript",
        "/dashboard/vendor/uPlot.LICENSE": "text/plain",
    }
    with keyed.client() as c:
        for path, ctype in files.items():
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
            assert KEY not in r.text and MODEL not in r.text, path
        assert "The MIT License" in c.get("/dashboard/vendor/uPlot.LICENSE").text
        assert c.get("/dashboard/../metrics").status_code == 401  # no file route escapes
        assert c.get("/dashboard/nope.js").json()["error"]["code"] == "not_found"
    with keyed.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        feed = c.get("/dashboard/events").json()
        assert feed["events"] == [] and len(feed["boot"]) == 12
        nodes = c.get("/dashboard/nodes").json()
        assert nodes == {"nodes": [], "error": "this gateway runs no deployment"}


def test_the_nodes_need_the_admin_key_when_one_is_set(replica_url: str) -> None:
    admin = "sk-admin-5d1e"
    auth = {"Authorization": f"Bearer {KEY}"}
    with (
        RunningGateway([replica(replica_url)], api_key=KEY, admin_key=admin) as g,
        g.client(headers=auth) as c,
    ):
        r = c.get("/dashboard/nodes")  # an API key reads the rest, not the addresses
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
        assert c.get("/dashboard/events").status_code == 200
        page = c.get("/dashboard")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_right_key_works(keyed: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    oai = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    out = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
    )
    assert "Paris" in (out.choices[0].message.content or "")
    with keyed.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.get("/").status_code == 200
        assert c.get("/metrics").status_code == 200
        r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert KEY not in caplog.text
    assert KEY not in repr(keyed.gateway.settings)


def test_no_key_means_open(client: httpx.Client) -> None:
    assert client.get("/", headers={"Authorization": "Bearer anything"}).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_admin_routes_are_off_without_an_admin_key_and_api_keys_never_open_them(
    keyed: RunningGateway, replica_url: str
) -> None:
    with keyed.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        r = c.get("/admin/deployment")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_off"
    assert "--admin-key" in r.json()["error"]["message"]
    admin = "sk-admin-3f9a0c1e"
    with RunningGateway([replica(replica_url)], api_key=KEY, admin_key=admin) as gw:
        for auth in (f"Bearer {KEY}", "Bearer nope", None):
            with gw.client(headers={"Authorization": auth} if auth else {}) as c:
                r = c.post("/admin/scale", json={"model": MODEL, "replicas": 2})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
        # A gateway over a fixed replica list has no controller to operate.
        with gw.client(headers={"Authorization": f"Bearer {admin}"}) as c:
            r = c.get("/admin/deployment")
        assert r.status_code == 403 and "does not run a deployment" in r.text
        # The admin key opens no inference route.
        with gw.client(headers={"Authorization": f"Bearer {admin}"}) as c:
            assert c.get("/v1/models").status_code == 401
