"""The CPU image as docs/deploy.md builds and runs it: made from Debian's packages (no
registry is reachable here), then three containers on one bridge network as head and two
workers, with the guide's own `raylm up`, `join`, `model sync` and `serve --replicas 2`,
and the OpenAI client on the host. It builds an image of ~5 GB, so it runs on request:
`make test-containers` (RAYLM_TEST_CONTAINERS=1); the default suite skips it."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/raylm-debian:bookworm"
IMAGE = "localhost/raylm-cpu:test"
NET = "raylm-test-net"
NAMES = ("raylm-test-head", "raylm-test-w1", "raylm-test-w2")
PORT = 18731
KEY = "sk-container-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.skipif(
    not os.environ.get("RAYLM_TEST_CONTAINERS") or shutil.which("podman") is None,
    reason="container test: run `make test-containers` (needs podman, root, ~5 GB)",
)


# This machine's kernel mixes cgroup v1 and v2, which crun refuses (runc runs), and the
# runtime starts with fewer processes and files allowed than podman's defaults ask for.
PODMAN = ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]
LIMITS = [
    "--ulimit",
    "nofile={0}:{0}".format(resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
    "--ulimit",
    "nproc=32768:32768",
]


def podman(*argv: str, timeout: float = 1800, check: bool = True) -> str:
    return sh(*PODMAN, *argv, timeout=timeout, check=check)


def sh(*argv: str, timeout: float = 1800, check: bool = True) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def _mirror_args() -> list[str]:
    """This machine's own PyPI mirror and wheels, where it has them (CI's machines do)."""
    args: list[str] = []
    mirrors = [d for d in ("/opt/pypi", "/opt/pypi-more") if Path(d, "simple").is_dir()]
    for d in mirrors:
        args += ["-v", f"{d}:{d}:ro"]
    if mirrors:
        urls = " ".join(f"file://{d}/simple" for d in mirrors)
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={urls}"]
    if Path("/opt/wheels").is_dir():
        args += ["-v", "/opt/wheels:/opt/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/opt/wheels"]
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():  # this machine's CAs, its TLS-inspecting proxy's included
        args += ["-v", f"{ca}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"]
    return args


@pytest.fixture(scope="module")
def image() -> str:
    if podman("images", "-q", BASE, check=False).strip() == "":
        started = time.monotonic()
        sh(str(ROOT / "deploy" / "docker" / "debian-base.sh"), BASE)
        print(f"base from Debian's packages in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    podman(
        "build", *LIMITS, "-f", str(ROOT / "deploy" / "docker" / "Dockerfile.cpu"),
        "--build-arg", f"BASE={BASE}", *_mirror_args(), "-t", IMAGE, str(ROOT),
    )  # fmt: skip
    print(f"CPU image built in {time.monotonic() - started:.0f} s")
    return IMAGE


def _cleanup() -> None:
    for name in NAMES:
        podman("rm", "-f", "-t", "5", name, check=False)
    podman("network", "rm", "-f", NET, check=False)


@pytest.fixture(scope="module")
def cluster(image: str) -> Iterator[list[str]]:
    _cleanup()
    podman("network", "create", NET)
    run = ["run", "-d", *LIMITS, "--network", NET, "--shm-size", "2g"]
    try:
        # The guide's head line: raylm is the container's first process, so it holds.
        podman(*run, "--name", NAMES[0], "-p", f"127.0.0.1:{PORT}:8000", image, "up")
        join = _join_line(NAMES[0])
        for name in NAMES[1:]:
            podman(*run, "--name", name, image, *join[1:])
        yield list(NAMES)
    finally:
        for name in NAMES:
            print(f"--- {name}\n" + podman("logs", "--tail", "20", name, check=False))
        _cleanup()


def _join_line(head: str) -> list[str]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        logs = podman("logs", head, check=False)
        m = re.search(r"^(raylm join \S+ --token \S+)$", logs, re.M)
        if m:
            return m.group(1).split()
        assert "Error" not in logs, logs
        time.sleep(2)
    raise AssertionError("the head printed no join line: " + logs)


def test_three_containers_serve_the_demo_model(cluster: list[str]) -> None:
    head = cluster[0]
    deadline = time.monotonic() + 180
    while "3 of 3 node(s) alive" not in (out := podman("exec", head, "raylm", "status")):
        assert time.monotonic() < deadline, out
        time.sleep(3)
    print(podman("exec", head, "raylm", "doctor", check=False))
    print(podman("exec", head, "raylm", "model", "sync", "smollm2-135m-instruct"))
    serve = [
        "raylm", "serve", "smollm2-135m-instruct", "--replicas", "2",
        "--host", "0.0.0.0", "--api-key", KEY,
    ]  # fmt: skip
    # In the background, its output kept in the container for when it fails.
    podman("exec", "-d", head, "sh", "-c", f"exec {' '.join(serve)} > /tmp/serve.log 2>&1")
    started = time.monotonic()
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key=KEY, max_retries=0)
    deadline = time.monotonic() + 600
    while True:
        try:
            r = client.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=8,
                temperature=0,
            )
            break
        except Exception as e:  # not up yet: connection refused, 503 until a replica is ready
            log = podman("exec", head, "cat", "/tmp/serve.log", check=False)
            alive = podman("exec", head, "pgrep", "-f", "raylm serve", check=False).strip()
            assert alive, f"raylm serve exited:\n{log}"
            assert time.monotonic() < deadline, f"no answer in 600 s: {e}\n{log}"
            time.sleep(5)
    assert r.choices[0].message.content
    print(f"the first answer {time.monotonic() - started:.0f} s after `raylm serve`")
    # Both replicas ready, on two of the containers (replicas spread over nodes).
    import httpx

    deadline = time.monotonic() + 600
    while True:
        state = httpx.get(f"http://127.0.0.1:{PORT}/", headers=AUTH, timeout=30).json()
        ready = [x for x in state["replicas"] if x["state"] == "ready"]
        if len(ready) == 2:
            break
        assert time.monotonic() < deadline, state
        time.sleep(5)
    assert len({x["node"] for x in ready}) == 2, ready
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    ips = podman("inspect", "-f", fmt, *cluster)
    assert {x["node"] for x in ready} <= set(ips.split()), (ready, ips)


def test_a_stopped_container_stops_its_node_cleanly(cluster: list[str]) -> None:
    """`podman stop` sends SIGTERM to raylm, the container's first process: it stops its
    node as `raylm down` does and exits 0 (a container that just died would exit 137)."""
    worker = cluster[2]
    podman("stop", "-t", "60", worker)
    code = podman("inspect", "-f", "{{.State.ExitCode}}", worker).strip()
    logs = podman("logs", worker)
    assert "Holding this node in the foreground" in logs, logs
    assert re.search(r"SIGTERM: stopped \d+ processes raylm started on this node", logs), logs
    assert code == "0", logs
