"""A replica answers only the gateway (and raylm's probes): every path but /health needs the
deployment's private replica key, which is in no command line and no log."""

from __future__ import annotations

import httpx
import psutil

from raylm.serve.replica_auth import KEY_ENV
from tests.conftest import Served


def _replica(p: psutil.Process) -> tuple[str, str]:
    argv = p.cmdline()
    base = f"http://{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}"
    return base, p.environ()[KEY_ENV]


def test_replicas_refuse_everyone_but_the_gateway(served: Served) -> None:
    engines = served.engine_pids()
    assert engines, "no replica engine found"
    for p in engines:
        base, key = _replica(p)
        assert key and key not in " ".join(p.cmdline())
        assert key != served.api_key
        # vLLM's own --api-key leaves /invocations open; raylm's check covers every path.
        for method, path in (("GET", "/v1/models"), ("POST", "/invocations"), ("GET", "/metrics")):
            r = httpx.request(method, base + path, json={}, timeout=30)
            assert r.status_code == 401, (path, r.status_code, r.text[:200])
            assert r.json()["error"]["type"] == "authentication_error"
            # Not the client's key either: only the gateway's.
            r = httpx.request(method, base + path, json={}, headers=served.headers, timeout=30)
            assert r.status_code == 401, path
        assert httpx.get(base + "/health", timeout=30).status_code == 200
        ok = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert ok.status_code == 200
        logs = list((served.home / "logs" / "pytest").glob("*.log"))
        assert logs and all(key not in f.read_text(errors="replace") for f in logs)
    # Through the gateway, with the client's key, everything works as before.
    with served.client() as c:
        assert c.get("/v1/models").status_code == 200
