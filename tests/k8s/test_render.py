"""`raylm k8s render` as docs/deploy.md shows it: seed 004's spec file and command run as
typed (the hub it reads the model's config from is a local stand-in), then every manifest
checked against Kubernetes' schemas and KubeRay's real CRDs, and against goldens."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from tests.k8s.manifests import check_all, check_raycluster, load_dir
from tests.readme.readme_doc import blocks, section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "planner"))
from fake_hub import fake_hub

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy.md"
MODELS = ROOT / "tests" / "fixtures" / "models"
GOLDEN = Path(__file__).resolve().parent / "golden"
RAYLM = str(Path(sys.executable).with_name("raylm"))
QWEN = "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4"
QWEN_CFG = MODELS / "qwen2.5-32b-instruct-gptq-int4.json"
FILES = {"secret.yaml", "network.yaml", "store.yaml", "raycluster.yaml", "service.yaml"}


def guide_example() -> tuple[str, str]:
    """(raylm.toml, the render command) of the guide's Kubernetes section."""
    text = section("Kubernetes", DEPLOY.read_text())
    (toml, *_) = blocks(text, "toml")
    (bash, *_) = blocks(text, "bash")
    (render,) = [line for line in bash if line.startswith("raylm k8s render")]
    return "\n".join(toml) + "\n", render


def run(
    cwd: Path, line: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(line)
    assert argv[0] == "raylm"
    return subprocess.run(
        [RAYLM, *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(cwd), "RAYLM_HOME": str(cwd / ".raylm"), **(env or {})},
    )


def render_seed_004(tmp: Path, extra: str = "") -> tuple[Path, subprocess.CompletedProcess[str]]:
    toml, line = guide_example()
    (tmp / "raylm.toml").write_text(toml)
    cfg = (MODELS / "qwen2.5-32b-instruct-gptq-int4.json").read_bytes()
    with fake_hub({QWEN: {"config.json": cfg}}) as url:
        p = run(tmp, f"{line} {extra}", env={"HF_ENDPOINT": url})
    out = tmp / shlex.split(line)[shlex.split(line).index("-o") + 1]
    return out, p


@pytest.fixture(scope="module")
def seed004(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out, p = render_seed_004(tmp_path_factory.mktemp("seed004"))
    assert p.returncode == 0, p.stderr + p.stdout
    return out, p.stdout


def head_script(cluster: dict[str, Any]) -> str:
    (container,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/bash", "-c", "--"]
    (script,) = container["args"]
    return str(script)


def test_the_guides_example_renders_manifests_that_validate(seed004: tuple[Path, str]) -> None:
    out, stdout = seed004
    files = load_dir(out)
    assert set(files) == FILES
    check_all(files)
    (cluster,) = files["raycluster.yaml"]
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    major, minor = (int(x) for x in spec["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), "KubeRay refuses token auth below Ray 2.52"
    # The plan on 2 x 4 L20 (4-bit weights fit one GPU): 8 replicas of one GPU each, over
    # the head and one worker of 4 GPUs.
    assert "plan: 8 replica(s) x TP=1 PP=1, max_model_len 4096" in stdout
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}
    (workers,) = spec["workerGroupSpecs"]
    assert (workers["groupName"], workers["replicas"]) == ("l20-x4", 1)
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 4
    }
    script = head_script(cluster)
    assert "--wait-nodes 2" in script
    assert "--replicas 8 --tp 1 --pp 1 --max-model-len 4096" in script
    # Every Ray pod: /dev/shm in memory, the store claim, the network ConfigMap.
    for pod in [head, workers["template"]["spec"]]:
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["shm"]["emptyDir"]["medium"] == "Memory"
        assert vols["model-store"]["persistentVolumeClaim"]["claimName"] == "qwen32b-models"
        assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": "qwen32b-network"}}]
    (claim,) = files["store.yaml"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (net,) = files["network.yaml"]
    assert net["data"]["NCCL_SOCKET_IFNAME"] == "eth0" and net["data"]["NCCL_IB_DISABLE"] == "1"
    (svc,) = files["service.yaml"]
    assert svc["spec"]["selector"] == {"ray.io/cluster": "qwen32b", "ray.io/node-type": "head"}
    assert svc["spec"]["type"] == "ClusterIP"
    probe = head["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": 8000}


def _parse_raylm(argv: list[str]) -> None:
    """Parse a raylm command line with raylm's own CLI (raises on an unknown flag)."""
    from raylm.cli.main import _register, app

    _register()
    cmd: Any = typer.main.get_command(app)
    i = 1
    while hasattr(cmd, "get_command"):
        ctx = cmd.make_context("raylm", [], resilient_parsing=True)
        sub = cmd.get_command(ctx, argv[i])
        assert sub is not None, f"raylm has no command {argv[: i + 1]}"
        cmd, i = sub, i + 1
    cmd.make_context(argv[i - 1], argv[i:])


def test_the_head_runs_lines_that_bash_and_raylm_accept(seed004: tuple[Path, str]) -> None:
    out, _ = seed004
    files = load_dir(out)
    (cluster,) = files["raycluster.yaml"]
    script = head_script(cluster)
    start, wait, serve = script.split(" && ")
    assert start.startswith("ulimit -n 65536; ")
    # KubeRay's line always ends the params with --block; bash drops it, Ray daemonizes.
    gen = "ray start --head --block --dashboard-agent-listen-port=52365 --metrics-export-port=8080"
    shown = subprocess.run(
        ["bash", "-c", "echo " + start.split("; ", 1)[1]],
        env={"KUBERAY_GEN_RAY_START_CMD": gen, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert shown == gen.replace(" --block", "")
    assert serve.startswith("exec raylm serve ")
    for line in (wait, serve.removeprefix("exec ")):
        _parse_raylm(shlex.split(line))
    (init,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["initContainers"]
    for line in init["args"][0].split(" || "):
        _parse_raylm(shlex.split(line))
    with pytest.raises((click.UsageError, typer.BadParameter, Exception)):
        _parse_raylm(["raylm", "serve", "x", "--no-such-flag"])


def test_the_seeds_own_layout_when_asked(tmp_path: Path) -> None:
    out, p = render_seed_004(tmp_path, "--tp 4 --pp 2")
    assert p.returncode == 0, p.stderr
    files = load_dir(out)
    check_all(files)
    (cluster,) = files["raycluster.yaml"]
    assert "--replicas 1 --tp 4 --pp 2" in head_script(cluster)
    (workers,) = cluster["spec"]["workerGroupSpecs"]
    assert workers["replicas"] == 1
    assert "plan: 1 replica(s) x TP=4 PP=2" in p.stdout


def _one_gpu(tmp: Path, *extra: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cfg = MODELS / "deepseek-r1-distill-qwen-1.5b.json"
    line = (
        "raylm k8s render deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --cluster 1x1xA10 "
        f"--store hostpath:/data/raylm --model-config {cfg} --max-model-len 16384 "
        "--name r1 --namespace llm -o out " + " ".join(extra)
    )
    return tmp / "out", run(tmp, line)


def test_one_gpu_machine_with_its_own_store_directory(tmp_path: Path) -> None:
    out, p = _one_gpu(tmp_path)
    assert p.returncode == 0, p.stderr
    files = load_dir(out)
    assert set(files) == FILES - {"store.yaml"}
    check_all(files)
    (cluster,) = files["raycluster.yaml"]
    assert "workerGroupSpecs" not in cluster["spec"]
    assert cluster["metadata"]["namespace"] == "llm"
    pod = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model-store"]["hostPath"] == {"path": "/data/raylm", "type": "DirectoryOrCreate"}
    assert "--wait-nodes 1" in head_script(cluster)


def _masked(files: dict[str, list[dict[str, Any]]]) -> str:
    """The files as YAML, with the generated keys masked (they differ on every run)."""
    texts = []
    for name, docs in sorted(files.items()):
        for doc in docs:
            if doc["kind"] == "Secret":
                doc["stringData"] = {
                    k: ("<generated>" if k.endswith("-key") else v)
                    for k, v in doc["stringData"].items()
                }
        texts.append(f"# {name}\n" + yaml.safe_dump_all(docs, sort_keys=False, width=4096))
    return "".join(texts)


@pytest.mark.parametrize("case", ["seed-004", "one-gpu"])
def test_renders_match_their_golden(case: str, tmp_path: Path) -> None:
    if case == "seed-004":
        out, p = render_seed_004(tmp_path)
    else:
        out, p = _one_gpu(tmp_path)
    assert p.returncode == 0, p.stderr
    got = _masked(load_dir(out))
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("RAYLM_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text(), f"rendered {case} differs from {golden} (see the diff)"


def test_the_schema_check_refuses_what_kuberay_would(seed004: tuple[Path, str]) -> None:
    import jsonschema
    import kubernetes_validate

    out, _ = seed004
    (cluster,) = load_dir(out)["raycluster.yaml"]
    bad = yaml.safe_load(yaml.safe_dump(cluster))
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        check_raycluster(bad)
    bad = yaml.safe_load(yaml.safe_dump(cluster))
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        check_raycluster(bad)


def test_keys_stay_in_the_secret(tmp_path: Path) -> None:
    toml, line = guide_example()
    # Top-level keys come before the file's [engine_args] table.
    (tmp_path / "raylm.toml").write_text('api_key = "sk-from-the-spec-file-0123"\n' + toml)
    cfg = (MODELS / "qwen2.5-32b-instruct-gptq-int4.json").read_bytes()
    with fake_hub({QWEN: {"config.json": cfg}}) as url:
        p = run(tmp_path, line, env={"HF_ENDPOINT": url})
    assert p.returncode == 0, p.stderr
    assert "sk-from-the-spec-file" not in p.stdout + p.stderr
    secret_file = tmp_path / "k8s-qwen32b" / "secret.yaml"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    (secret,) = yaml.safe_load_all(secret_file.read_text())
    assert secret["stringData"]["api-key"] == "sk-from-the-spec-file-0123"
    admin = secret["stringData"]["admin-key"]
    assert len(admin) >= 32 and admin != secret["stringData"]["api-key"]
    for name in FILES - {"secret.yaml"}:
        assert "sk-from-the-spec-file" not in (secret_file.parent / name).read_text()
        assert admin not in (secret_file.parent / name).read_text()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ("--store nfs:/x", "Bad --store 'nfs:/x'"),
        ("--name Bad_Name", "is not a name Kubernetes accepts"),
        ("--cluster 2x4xNOPE", "Unknown GPU 'NOPE'"),
        ("--service-type Ingress", "service_type"),
        ("--tp 3", "TP=3"),
        ("--port 8080", "8080 is Ray's metrics port"),
        ("--node-selector pool", "Bad --node-selector 'pool'"),
        ("--cluster '1x8x80GB, 2x4xL20'", "'80GB GPU' names none the pods"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    flags: str, says: str, tmp_path: Path
) -> None:
    out, p = render_seed_004(tmp_path, flags)
    assert p.returncode == 1, p.stdout + p.stderr
    assert says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_a_file_of_several_models_is_refused(tmp_path: Path) -> None:
    (tmp_path / "two.toml").write_text(
        '[[models]]\nmodel = "a/b"\n\n[[models]]\nmodel = "c/d"\nserved_model_name = "d"\n'
    )
    p = run(tmp_path, "raylm k8s render -f two.toml --cluster 1x1xA10")
    assert p.returncode == 1
    assert "lists 2 models; `raylm k8s render` takes one" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_path_on_this_machine_is_refused(tmp_path: Path) -> None:
    p = run(tmp_path, f"raylm k8s render /models/qwen --cluster 1x1xA10 --model-config {QWEN_CFG}")
    assert p.returncode == 1
    assert "is a path on this machine, which the pods cannot read" in p.stderr
    assert "Traceback" not in p.stderr


def test_pods_ask_for_the_gpus_the_plan_uses_on_each_machine(tmp_path: Path) -> None:
    # 3 replicas of TP=2 on 2 x 4 L20: two on one machine, one on the other.
    out, p = render_seed_004(tmp_path, "--replicas 3 --tp 2")
    assert p.returncode == 0, p.stderr
    files = load_dir(out)
    check_all(files)
    (cluster,) = files["raycluster.yaml"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"] == {"nvidia.com/gpu": 4}
    (workers,) = cluster["spec"]["workerGroupSpecs"]
    assert workers["replicas"] == 1 and workers["groupName"] == "l20-x2"
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 2
    }
    assert "--wait-nodes 2" in head_script(cluster)
    # One replica of TP=2 PP=2 fits one machine: no worker at all.
    (tmp_path / "one").mkdir()
    out, p = render_seed_004(tmp_path / "one", "--replicas 1 --tp 2 --pp 2")
    assert p.returncode == 0, p.stderr
    (cluster,) = load_dir(out)["raycluster.yaml"]
    assert "workerGroupSpecs" not in cluster["spec"]
    assert "--wait-nodes 1" in head_script(cluster)


def test_several_gpu_kinds_get_a_group_each_on_machines_of_their_kind(tmp_path: Path) -> None:
    out, p = render_seed_004(tmp_path, "--cluster '1x8xH100, 2x4xL20'")
    assert p.returncode == 0, p.stderr
    files = load_dir(out)
    check_all(files)
    (cluster,) = files["raycluster.yaml"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert head["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 8}
    (workers,) = cluster["spec"]["workerGroupSpecs"]
    assert (workers["groupName"], workers["replicas"]) == ("l20-x4", 2)
    assert workers["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L20"}
    assert "--wait-nodes 3" in head_script(cluster)


def test_rendering_again_keeps_the_keys_clients_hold(tmp_path: Path) -> None:
    out, p = render_seed_004(tmp_path)
    assert p.returncode == 0, p.stderr
    first = yaml.safe_load((out / "secret.yaml").read_text())["stringData"]
    out, p = render_seed_004(tmp_path, "--tp 4 --pp 2")
    assert p.returncode == 0, p.stderr
    again = yaml.safe_load((out / "secret.yaml").read_text())["stringData"]
    assert (again["api-key"], again["admin-key"]) == (first["api-key"], first["admin-key"])
    assert "generated" not in p.stdout


def test_an_autoscaled_model_gets_room_for_its_most_replicas(tmp_path: Path) -> None:
    toml, line = guide_example()
    (tmp_path / "raylm.toml").write_text(
        toml
        + "\n[autoscaling]\nmin_replicas = 1\nmax_replicas = 4\ntarget_in_flight_per_replica = 8\n"
    )
    cfg = QWEN_CFG.read_bytes()
    with fake_hub({QWEN: {"config.json": cfg}}) as url:
        p = run(tmp_path, f"{line} --tp 2", env={"HF_ENDPOINT": url})
    assert p.returncode == 0, p.stderr
    files = load_dir(tmp_path / "k8s-qwen32b")
    check_all(files)
    (cluster,) = files["raycluster.yaml"]
    script = head_script(cluster)
    # serve starts at min_replicas itself; the pods hold room for 4 x TP=2.
    assert "--replicas" not in script and "--tp 2" in script
    assert "--wait-nodes 2" in script
    (workers,) = cluster["spec"]["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": 4
    }
