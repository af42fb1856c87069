"""Several models behind one gateway (`[[models]]` in raylm.toml): planned together,
refused before anything loads when they do not fit, served on one port and routed by
`model`. Both models are the demo model under two names (the only weights here)."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import RAYLM, Served, free_port, running_serve

ADMIN_KEY = "sk-admin-several-90b3d4"
SPEC = f"""
admin_key = "{ADMIN_KEY}"

[[models]]
served_model_name = "chat-a"

[[models]]
served_model_name = "chat-b"
max_model_len = 1024
"""


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("several")
    spec = tmp / "raylm.toml"
    spec.write_text(SPEC)
    with running_serve(tmp, "--name", "several", "-f", str(spec)) as s:
        yield s


def test_both_models_are_listed_and_each_answers_by_name(two: Served) -> None:
    with two.client() as c:
        listed = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        replicas = c.get("/").json()["replicas"]
        unnamed = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert set(listed) == {"chat-a", "chat-b"}
    assert listed["chat-b"]["max_model_len"] == 1024
    assert sorted((r["replica_id"], r["model"]) for r in replicas) == [
        ("chat-a-0", "chat-a"),
        ("chat-b-0", "chat-b"),
    ]
    assert unnamed.status_code == 400 and unnamed.json()["error"]["code"] == "model_required"
    client = openai.OpenAI(base_url=f"{two.base_url}/v1", api_key=two.api_key, timeout=120)
    q = [{"role": "user", "content": "What is the capital of France?"}]
    for model in ("chat-a", "chat-b"):
        out = client.chat.completions.create(model=model, messages=q, temperature=0, max_tokens=8)  # type: ignore[arg-type]
        assert out.model == model and out.choices[0].message.content
    # The cores were shared: one each on this 2-core machine, not two apiece.
    log = two.log()
    assert "chat-a: 1 replica(s) x TP=1 PP=1, 1 node(s) per replica, 1 core(s)" in log
    assert "chat-b: 1 replica(s) x TP=1 PP=1, 1 node(s) per replica, 1 core(s)" in log


def _raylm(two: Served, *args: str) -> subprocess.CompletedProcess[str]:
    admin = ["--endpoint", two.base_url, "--admin-key", ADMIN_KEY]
    return subprocess.run([RAYLM, *args, *admin], capture_output=True, text=True, timeout=900)


def _models(two: Served) -> set[str]:
    with two.client() as c:
        return {m["id"] for m in c.get("/v1/models").json()["data"]}


def _ask_until(two: Served, model: str, done: threading.Event) -> list[int]:
    statuses = []
    with two.client() as c:
        while not done.is_set():
            body = {"model": model, "prompt": "Hi", "max_tokens": 4}
            statuses.append(c.post("/v1/completions", json=body).status_code)
    return statuses


def test_a_model_is_removed_and_another_added_while_the_first_answers_throughout(
    two: Served, tmp_path: Path
) -> None:
    added = tmp_path / "chat-c.toml"
    added.write_text('served_model_name = "chat-c"\nmax_model_len = 512\n')
    done = threading.Event()
    with cf.ThreadPoolExecutor(1) as pool:
        load = pool.submit(_ask_until, two, "chat-a", done)
        removed = _raylm(two, "remove", "chat-b")
        assert removed.returncode == 0, removed.stderr
        assert "draining chat-b-0" in removed.stderr and "chat-b: removed" in removed.stdout
        assert _models(two) == {"chat-a"}
        # chat-b's core is free again: the new model is planned onto it.
        grown = _raylm(two, "add", "-f", str(added))
        assert grown.returncode == 0, grown.stderr
        assert "starting chat-c-0" in grown.stderr
        assert "chat-c: added, 1 replica(s) ready" in grown.stdout
        time.sleep(2)
        done.set()
        statuses = load.result()
    assert statuses and all(s == 200 for s in statuses), statuses
    assert _models(two) == {"chat-a", "chat-c"}
    with two.client() as c:
        r = c.post("/v1/completions", json={"model": "chat-c", "prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "chat-c"
    # kv-aware routing tokenizes its prompts too, once the gateway loaded its tokenizer.
    loaded = 'raylm_kv_tokenizer_loaded{model="chat-c"} 1.0'
    deadline = time.monotonic() + 60
    with two.client() as c:
        while loaded not in (metrics := c.get("/metrics").text):
            assert time.monotonic() < deadline, [
                x for x in metrics.splitlines() if "tokenizer" in x
            ]
            time.sleep(1)
    # Refused, each with its reason: a name taken, a deployment field, no room left, the
    # last model, an unknown one.
    again = _raylm(two, "add", "-f", str(added))
    assert again.returncode == 1 and "already served" in again.stderr
    added.write_text('served_model_name = "chat-d"\nport = 9000\n')
    field = _raylm(two, "add", "-f", str(added))
    assert field.returncode == 1 and "not port" in field.stderr
    added.write_text('served_model_name = "chat-d"\n')
    full = _raylm(two, "add", "-f", str(added))
    assert full.returncode == 1 and "Cannot add chat-d" in full.stderr
    unknown = _raylm(two, "remove", "chat-z")
    assert unknown.returncode == 1 and "No model `chat-z`" in unknown.stderr
    assert "Traceback" not in again.stderr + field.stderr + full.stderr + unknown.stderr


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAYLM, "serve", *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_a_set_that_does_not_fit_is_refused_before_anything_loads(
    two: Served, tmp_path: Path
) -> None:
    # `two` first: the demo model is then in the store (no conversion here).
    spec = tmp_path / "raylm.toml"
    spec.write_text(
        "".join(f'[[models]]\nserved_model_name = "m{i}"\ncpus_per_replica = 2\n' for i in range(2))
    )
    r = _serve("--name", "too-many", "-f", str(spec))
    assert r.returncode == 1, r.stderr
    assert "The 2 models do not fit together on this cluster: m1 has no room" in r.stderr
    assert "the models before it take m0: 1 replica(s)" in r.stderr
    assert "Traceback" not in r.stderr and "vLLM is loading" not in r.stderr


def test_model_fields_belong_to_each_model(tmp_path: Path) -> None:
    spec = tmp_path / "raylm.toml"
    spec.write_text(SPEC)
    r = _serve("-f", str(spec), "--replicas", "2")
    assert r.returncode == 1 and "Flags set replicas" in r.stderr and "per model" in r.stderr
    spec.write_text('[[models]]\nserved_model_name = "a"\nport = 9000\n')
    r = _serve("-f", str(spec))
    assert r.returncode == 1 and "[[models]] entry 1" in r.stderr and "port" in r.stderr
    spec.write_text('[[models]]\nserved_model_name = "a"\n[[models]]\nserved_model_name = "a"\n')
    r = _serve("-f", str(spec))
    assert r.returncode == 1 and "serves a more than once" in r.stderr
    assert "Traceback" not in r.stderr
