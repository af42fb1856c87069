"""Pieces that need no cluster: NCCL log parsing (real H200 logs), fingerprints, GPU and
interface checks, the Gloo all-reduce probe, and the CLI's errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raylm.cluster import nccl_probe
from raylm.cluster.doctor import check_gpu_memory, check_gpus, check_shm
from raylm.cluster.fingerprint import compare, local_fingerprint
from raylm.cluster.netif import choose_interface, list_interfaces
from raylm.cluster.node import GpuInfo, GpuProcess, local_node_facts
from raylm.cluster.ports import RayPorts
from raylm.errors import ClusterError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "cluster"


def test_parse_nccl_logs_from_h200_run() -> None:
    p2p = (FIX / "nccl" / "h200x2_p2p.log").read_text()
    sock = (FIX / "nccl" / "h200x2_socket.log").read_text()
    assert nccl_probe.parse_transports(p2p) == ["P2P"]
    assert nccl_probe.parse_transports(sock) == ["NET/Socket"]
    assert nccl_probe.parse_network(p2p) == nccl_probe.parse_network(sock) == "Socket"
    assert nccl_probe.parse_transports("x via NET/IB/0/GDRDMA\ny via NET/IB/1") == ["NET/IB"]


def test_gpu_check_on_real_nvml_inventory() -> None:
    inv = json.loads((FIX / "gpu_h200x2.json").read_text())
    facts = local_node_facts().model_copy(
        update={"gpus": [GpuInfo.model_validate(g) for g in inv["gpus"]]}
    )
    ok = check_gpus("10.0.0.1", facts)
    assert ok.status == "PASS" and "2 x NVIDIA H200" in ok.finding and "cc 9.0" in ok.finding
    old = facts.model_copy(
        update={
            "gpus": [
                facts.gpus[0].model_copy(update={"name": "Tesla P100", "compute_capability": "6.0"})
            ]
        }
    )
    bad = check_gpus("10.0.0.1", old)
    assert bad.status == "FAIL" and "Tesla P100 cc 6.0" in bad.finding and "7.0" in bad.fix


def test_gpu_memory_held_by_other_processes_is_named() -> None:
    inv = json.loads((FIX / "gpu_h200x2.json").read_text())
    gpus = [GpuInfo.model_validate(g) for g in inv["gpus"]]
    held = 120 << 30
    busy = gpus[0].model_copy(
        update={
            "memory_used_bytes": held + (1 << 30),
            "processes": [
                GpuProcess(pid=4242, name="python", memory_bytes=held),
                GpuProcess(pid=77, name="VLLM::EngineCore", memory_bytes=1 << 30, raylm=True),
            ],
        }
    )
    facts = local_node_facts().model_copy(update={"gpus": [busy, gpus[1]]})
    (warn,) = check_gpu_memory("10.0.0.1", facts)
    assert warn.status == "WARN" and warn.finding.startswith("GPU0 NVIDIA H200: 120.00 GiB")
    assert "pid 4242 (python)" in warn.finding and "EngineCore" not in warn.finding
    assert "19.40 GiB of 140.40 GiB free" in warn.finding and "raylm plan" in warn.fix
    quiet = local_node_facts().model_copy(update={"gpus": gpus})
    assert [c.status for c in check_gpu_memory("10.0.0.1", quiet)] == ["PASS"]


def test_shm_thresholds() -> None:
    f = local_node_facts()
    assert check_shm("n", f.model_copy(update={"shm_bytes": 64 << 20})).status == "FAIL"
    assert check_shm("n", f.model_copy(update={"shm_bytes": 512 << 20})).status == "WARN"
    assert check_shm("n", f.model_copy(update={"shm_bytes": 8 << 30})).status == "PASS"


def test_fingerprint_compare() -> None:
    from importlib.metadata import version

    from raylm.serve.launcher import installed_vllm_distribution

    head = local_fingerprint()
    # What this machine has, CPU build or GPU build alike.
    assert head.ray == version("ray") and head.vllm_dist == installed_vllm_distribution()
    assert head.vllm == version(head.vllm_dist)
    assert compare(head, head) == []
    other = head.model_copy(update={"ray": "2.59.0", "cuda_runtime": "12.8"})
    diffs = {d.field: d for d in compare(head, other)}
    assert diffs["ray"].blocking and diffs["ray"].fix == "pip install 'ray==2.60.0'"
    assert not diffs["cuda_runtime"].blocking


def test_choose_interface_never_loopback() -> None:
    nic = choose_interface()
    assert nic.up and not nic.ip.startswith("127.") and nic.name != "lo"
    assert choose_interface(node_ip=nic.ip).name == nic.name
    assert choose_interface(reach=nic.ip).name == nic.name
    with pytest.raises(ClusterError, match="No interface of this node has the address"):
        choose_interface(node_ip="203.0.113.77")
    with pytest.raises(ClusterError, match="No IPv4 interface named"):
        choose_interface(iface="nosuchif0")
    assert any(i.name == "lo" for i in list_interfaces())


def test_firewall_rule_names_every_port() -> None:
    p = RayPorts()
    rule = p.firewall_rule()
    for port in (p.gcs, p.object_manager, p.node_manager, p.probe, p.collective):
        assert str(port) in rule.split(",")
    assert rule.endswith(f"{p.min_worker}-{p.max_worker}")
    # The ufw line the Chinese multi-node guides use, for every one of those ports.
    ufw = p.ufw_command("10.0.0.7")
    assert ufw.startswith("sudo ufw allow proto tcp from 10.0.0.7 to any port ")
    listed = ufw.rsplit(" ", 1)[1].split(",")
    assert listed[:-1] == rule.split(",")[:-1] and listed[-1] == f"{p.min_worker}:{p.max_worker}"
    assert len(listed) + 1 <= 15  # ufw's limit; a range counts twice


def test_gloo_allreduce_probe() -> None:
    res = nccl_probe.local_probe(backend="gloo", nprocs=2, size_bytes=1 << 20, iters=2)
    assert res["ok"] and res["world"] == 2 and res["busbw_gbps"] > 0


def _raylm(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAYLM_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "raylm.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status"], "No Ray cluster to attach to"),
        (["doctor", "--json"], "No Ray cluster to attach to"),
        (["join", "127.0.0.1:notaport"], "Bad port in head address"),
        (["join", "127.0.0.1:1"], "No interface of this node reaches 127.0.0.1"),
        (["join", "127.0.0.1:1", "--node-ip", "127.0.0.1"], "The head's ports do not answer"),
        (["up", "--node-ip", "203.0.113.77"], "No interface of this node has the address"),
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    p = _raylm(*args, home=tmp_path)
    err = " ".join(p.stderr.split())
    assert p.returncode == 1 and message in err and "Traceback" not in err, p.stderr
    assert p.stdout == ""
    assert not (tmp_path / "cluster" / "state.json").exists()


def test_down_with_nothing_started(tmp_path: Path) -> None:
    p = _raylm("down", "--json", home=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout) == {"stopped_pids": []}


def test_ray_temp_dir_stays_short_under_a_deep_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found on a GPU machine: `raylm up` under a deep HOME died in Ray with "AF_UNIX path
    # length cannot exceed 107 bytes".
    from raylm.cluster import bringup

    deep = tmp_path / ("d" * 60) / "home"
    monkeypatch.setenv("HOME", str(deep))
    monkeypatch.delenv("RAYLM_HOME", raising=False)
    tdir = bringup._default_temp_dir()
    assert len(str(tdir)) <= 43 and str(tdir).startswith("/tmp/raylm-")
    assert bringup._default_temp_dir() == tdir  # the same dir for the same home, every time
    monkeypatch.setenv("HOME", "/root")
    assert bringup._default_temp_dir() == Path("/root/.raylm/ray")
    with pytest.raises(ClusterError, match="107 bytes") as e:
        bringup._check_temp_dir(deep / "ray")
    assert e.value.command == "raylm up --temp-dir /tmp/raylm"


def test_ray_cli_found_without_its_script(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray installed into a `pip --target` dir has no `ray` script anywhere.
    from raylm.cluster import ray_process

    python = sys.executable
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python3")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ray_process.ray_executable() == [
        "/nonexistent/bin/python3",
        "-m",
        "ray.scripts.scripts",
    ]
    p = subprocess.run(
        [python, "-m", "ray.scripts.scripts", "--version"], capture_output=True, text=True
    )
    assert p.returncode == 0 and "version" in p.stdout, p.stderr


def _fake_ray_start(tmp_path: Path, first_words: str, failures: int = 1) -> list[str]:
    """A stand-in for `ray start` that fails `failures` times with `first_words`, then
    succeeds."""
    count = tmp_path / "tries"
    script = (
        "import pathlib, sys\n"
        f"count = pathlib.Path({str(count)!r})\n"
        "n = int(count.read_text()) if count.exists() else 0\n"
        "count.write_text(str(n + 1))\n"
        f"if n < {failures}:\n"
        f"    sys.exit({first_words!r})\n"
        "print('started')\n"
    )
    return [sys.executable, "-c", script]


_REGISTRATION = "Exception: The current node timed out during startup. This could happen ..."


@pytest.mark.parametrize("failures", [1, 2])
def test_ray_start_retries_when_rays_own_registration_time_runs_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, failures: int
) -> None:
    from raylm.cluster.ray_process import start_ray

    run_id, out = start_ray(_fake_ray_start(tmp_path, _REGISTRATION, failures), {}, tmp_path)
    assert "started" in out and len(run_id) == 32
    assert caplog.text.count("trying again") == failures
    assert (tmp_path / "tries").read_text() == str(failures + 1)


def test_ray_start_gives_up_after_three_registration_timeouts(tmp_path: Path) -> None:
    from raylm.cluster.ray_process import start_ray

    # What the raylet itself said is the error's evidence (a real one, from Ray's log).
    logs = tmp_path / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.err").write_text("")
    (logs / "raylet.out").write_text(
        "[2026-11-23 21:28:02,101 I 4021 4021] main.cc:279: Setting node ID\n\n"
        "[2026-11-23 21:28:02,310 E 4021 4021] node_manager.cc:3207: Failed to bind\n"
    )
    with pytest.raises(ClusterError, match="did not register with the GCS in time") as ei:
        start_ray(_fake_ray_start(tmp_path, _REGISTRATION, 3), {}, tmp_path)
    assert (tmp_path / "tries").read_text() == "3"
    assert "raylet.out" in (ei.value.fix or "") and "too busy" in (ei.value.why or "")
    why = ei.value.why or ""
    assert why.endswith(
        "Setting node ID\n  [2026-11-23 21:28:02,310 E 4021 4021] "
        "node_manager.cc:3207: Failed to bind"
    ), why


def test_ray_start_other_failures_are_not_retried(tmp_path: Path) -> None:
    from raylm.cluster.ray_process import start_ray

    with pytest.raises(ClusterError, match="`ray start` failed") as ei:
        start_ray(_fake_ray_start(tmp_path, "port 6379 is already in use"), {}, tmp_path)
    assert "port 6379 is already in use" in (ei.value.why or "")


def _probe(reach: list[tuple[str, str, int, str]], dashboard: str = "", auth: str = "token") -> Any:
    from raylm.cluster.doctor.probes import NodeProbe, PortReach

    return NodeProbe(
        facts=local_node_facts(),
        env={"RAY_AUTH_MODE": auth},
        interfaces=[],
        reach=[PortReach(ip=ip, name=n, port=p, error=e) for ip, n, p, e in reach],
        dashboard=dashboard,
        listening=[],
    )


def test_reachability_names_the_blocked_port_and_the_rule_that_opens_it() -> None:
    from raylm.cluster.doctor.network import check_reach

    ports = RayPorts()
    ips = {"a": "10.0.0.1", "b": "10.0.0.2"}
    res = {
        "a": _probe(
            [("10.0.0.2", "gcs", 6379, ""), ("10.0.0.2", "node_manager", 8077, "timed out")]
        ),
        "b": _probe([("10.0.0.1", "gcs", 6379, "")]),
    }
    checks, matrix = check_reach(res, ips, ports)
    by_node = {c.node: c for c in checks}
    assert by_node["10.0.0.1"].status == "PASS"
    assert by_node["10.0.0.2"].status == "FAIL"
    assert "10.0.0.1 -> 10.0.0.2:8077 (node_manager): timed out" in by_node["10.0.0.2"].finding
    assert by_node["10.0.0.2"].fix.startswith("open TCP 8077 on 10.0.0.2")
    assert f"`{ports.ufw_command('10.0.0.1')}`; then `sudo ufw reload`" in by_node["10.0.0.2"].fix
    assert matrix == {"10.0.0.1": {"10.0.0.2": [8077]}, "10.0.0.2": {"10.0.0.1": []}}


def test_auth_an_open_dashboard_fails_and_auth_off_is_worse_when_the_gcs_is_reachable() -> None:
    from raylm.cluster.doctor.network import check_auth

    ports = RayPorts()
    ips = {"a": "10.0.0.1", "b": "10.0.0.2"}
    closed = {"a": _probe([], "401"), "b": _probe([("10.0.0.1", "gcs", 6379, "")], "401")}
    assert [c.status for c in check_auth("10.0.0.1", closed, ips, ports)] == ["PASS"]
    opened = {"a": _probe([], "200", auth=""), "b": _probe([("10.0.0.1", "gcs", 6379, "")], "401")}
    checks = check_auth("10.0.0.1", opened, ips, ports)
    assert [(c.node, c.status) for c in checks] == [("10.0.0.1", "FAIL"), ("10.0.0.1", "FAIL")]
    assert "answers without a token (from 10.0.0.1)" in checks[0].finding
    assert "the GCS is reachable from the network" in checks[1].finding
    # Auth off, but nobody reached the GCS: a warning, not a failure.
    alone = {"a": _probe([], "401", auth=""), "b": _probe([], "401")}
    assert [c.status for c in check_auth("10.0.0.1", alone, ips, ports)] == ["PASS", "WARN"]


def test_exposure_an_open_vllm_api_fails_and_rays_metrics_only_warn() -> None:
    from raylm.cluster.doctor.network import check_exposure
    from raylm.cluster.exposure import Exposure, ListeningPort, PortKind, Verdict

    def seen(port: int, kind: PortKind, verdict: Verdict, process: str) -> Exposure:
        lp = ListeningPort(port=port, bind="0.0.0.0", process=process, kind=kind)
        return Exposure(node="10.0.0.2", port=lp, verdict=verdict, detail="HTTP/1.1 200 OK")

    found = [
        seen(8001, PortKind.VLLM, Verdict.OPEN, "python"),
        seen(44217, PortKind.RAY, Verdict.OPEN, "raylet"),
        seen(8077, PortKind.RAY, Verdict.NOT_HTTP, "raylet"),
    ]
    checks = check_exposure(found, ["10.0.0.1", "10.0.0.2"])
    assert [(c.node, c.status) for c in checks] == [
        ("10.0.0.1", "PASS"),
        ("10.0.0.2", "FAIL"),
        ("10.0.0.2", "WARN"),
    ]
    assert "port(s) 8001" in checks[1].finding
    assert (
        "44217 (raylet: HTTP/1.1 200 OK)" in checks[2].finding and "8077" not in checks[2].finding
    )


def test_in_a_container_the_fix_is_the_run_flag() -> None:
    f = local_node_facts().model_copy(update={"shm_bytes": 64 << 20, "container": True})
    assert "--shm-size=16g" in check_shm("n", f).fix
    bare = f.model_copy(update={"container": False})
    assert check_shm("n", bare).fix.startswith("give /dev/shm more room: mount")
    gpu_build = f.fingerprint.model_copy(update={"vllm_dist": "vllm"})
    blind = f.model_copy(update={"gpus": [], "fingerprint": gpu_build})
    assert "--gpus all" in check_gpus("n", blind).fix
    assert "NVIDIA driver" in check_gpus("n", blind.model_copy(update={"container": False})).fix
