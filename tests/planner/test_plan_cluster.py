"""Cluster descriptions: NxGxGPU strings, files, the live inventory shape, the GPU table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from raylm.cluster.inventory import ClusterInventory, NodeInventory
from raylm.cluster.node import GpuInfo
from raylm.errors import ConfigError, PlanError
from raylm.models.facts import ModelFacts
from raylm.planner import cluster_from_inventory, find_gpu, gpu_table, parse_cluster_spec, plan

GIB = 1024**3
HARDWARE = Path(__file__).resolve().parents[1] / "fixtures" / "hardware"


def test_gpu_table_carries_the_datasheet_figures() -> None:
    sheet = json.loads((HARDWARE / "gpus.json").read_text())["gpus"]
    table = {g.name: g for g in gpu_table()}
    assert set(table) == {g["name"] for g in sheet}
    for g in sheet:
        row = table[g["name"]]
        assert (row.memory_gb, row.compute_capability, row.bandwidth_gbps, row.bf16) == (
            g["memory_gb"],
            g["compute_capability"],
            g["bandwidth_gbps"],
            g["bf16"],
        )


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("L20", "NVIDIA L20"),
        ("l40s", "NVIDIA L40S"),
        ("A10", "NVIDIA A10"),
        ("A100", "NVIDIA A100-SXM4-80GB"),
        ("H100", "NVIDIA H100 80GB HBM3"),
        ("rtx4090", "NVIDIA GeForce RTX 4090"),
        ("4090", "NVIDIA GeForce RTX 4090"),
        ("V100", "Tesla V100-SXM2-32GB"),
        ("T4", "Tesla T4"),
        ("NVIDIA H200", "NVIDIA H200"),
    ],
)
def test_gpu_names_as_people_type_them(typed: str, name: str) -> None:
    g = find_gpu(typed)
    assert g is not None and g.name == name


def test_seed_cluster_2x4xL20() -> None:
    c = parse_cluster_spec("2x4xL20")
    assert len(c.nodes) == 2 and c.total_gpus == 8
    n = c.nodes[0]
    assert (n.gpu_name, n.gpu_count, n.gpu_memory_bytes) == ("NVIDIA L20", 4, 48 * GIB)
    assert n.compute_capability == "8.9" and n.bf16 and not n.infiniband
    assert {x.name for x in c.nodes} == {"node0", "node1"}


def test_memory_only_and_infiniband_and_groups() -> None:
    c = parse_cluster_spec("1x8x80GB")
    assert c.nodes[0].gpu_memory_bytes == 80 * GIB and c.nodes[0].compute_capability is None
    assert parse_cluster_spec("2x8xH100+ib").nodes[1].infiniband
    mixed = parse_cluster_spec("1x8xH100, 2x4xL20")
    assert [n.gpu_count for n in mixed.nodes] == [8, 4, 4]
    assert mixed.total_gpus == 16


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("2x4", "Cannot read cluster description"),
        ("2x4xFOO", "Unknown GPU 'FOO'.*NVIDIA L20"),
        ("0x4xL20", "no GPUs"),
        ("lots of gpus", "Cannot read cluster description"),
        ("missing.json", "Cannot read cluster file"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_cluster_spec(spec)


def test_json_and_toml_files(tmp_path: Path) -> None:
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"nodes": [{"count": 2, "gpus": 4, "gpu": "L20"}]}))
    assert parse_cluster_spec(j).total_gpus == 8
    t = tmp_path / "c.toml"
    t.write_text("[[nodes]]\ncount = 1\ngpus = 8\nmemory_gb = 80\ninfiniband = true\n")
    c = parse_cluster_spec(str(t))
    assert c.total_gpus == 8 and c.nodes[0].infiniband
    assert c.nodes[0].gpu_memory_bytes == 80 * GIB
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"gpus": 4}]}))
    with pytest.raises(ConfigError, match="not understood"):
        parse_cluster_spec(bad)
    # A saved ClusterSpec reads back as it was.
    full = tmp_path / "full.json"
    full.write_text(parse_cluster_spec("2x4xL20").model_dump_json())
    assert parse_cluster_spec(full).nodes == parse_cluster_spec("2x4xL20").nodes


def _gpu(i: int, used: int = 0) -> GpuInfo:
    return GpuInfo(
        index=i,
        name="NVIDIA L20",
        uuid=f"GPU-{i}",
        memory_total_bytes=46068 * 1024**2,
        memory_used_bytes=used,
        utilization_pct=0,
        compute_capability="",  # as an old driver reports it: the GPU table fills it in
        pci_bus_id=f"0000:0{i}:00.0",
    )


def _node(ip: str, gpus: list[GpuInfo], memory: int, alive: bool = True) -> NodeInventory:
    return NodeInventory(
        node_id=ip,
        ip=ip,
        role="worker",
        alive=alive,
        cpus=64.0 if gpus else 2.0,
        ray_gpus=float(len(gpus)),
        memory_bytes=memory,
        disk_free_bytes=100 * GIB,
        model_store="/root/.raylm/models",
        shm_bytes=GIB,
        gpus=gpus,
        versions=None,
        raylm_actors=[],
        error="",
    )


def _inventory(*nodes: NodeInventory) -> ClusterInventory:
    return ClusterInventory(
        address="10.0.0.1:6379", taken_at=0.0, nodes=list(nodes), actors_error=""
    )


GPU_NODE = _node("10.0.0.1", [_gpu(i) for i in range(4)], 512 * GIB)
CPU_NODE = _node("10.0.0.2", [], 8 * GIB)
INVENTORY = _inventory(GPU_NODE, CPU_NODE)


def test_live_inventory_shape(tmp_path: Path) -> None:
    c = cluster_from_inventory(INVENTORY)
    gpu, cpu = c.nodes
    # NVML's figure wins over the datasheet's; the table fills what NVML lacks.
    assert gpu.gpu_memory_bytes == 46068 * 1024**2 and gpu.compute_capability == "8.9"
    assert (gpu.name, gpu.gpu_count, gpu.accelerator) == ("10.0.0.1", 4, "gpu")
    assert (cpu.accelerator, cpu.gpu_count, cpu.gpu_memory_bytes) == ("cpu", 1, 8 * GIB)
    # `raylm status --json > f.json` works as --cluster f.json.
    f = tmp_path / "status.json"
    f.write_text(INVENTORY.model_dump_json())
    assert parse_cluster_spec(f).nodes == c.nodes
    # A node with InfiniBand says so, so TP may span such nodes.
    ib = _inventory(GPU_NODE.model_copy(update={"infiniband": True}))
    assert cluster_from_inventory(ib).nodes[0].infiniband


def test_bad_inventory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lists no nodes"):
        cluster_from_inventory(_inventory())
    with pytest.raises(ConfigError, match="neither GPUs nor memory"):
        cluster_from_inventory(_inventory(_node("10.0.0.3", [], 0)))
    # A hand-cut status file is named as such, with the fields it lacks.
    f = tmp_path / "cut.json"
    f.write_text(json.dumps({"nodes": [{"ip": "10.0.0.1", "gpus": []}]}))
    with pytest.raises(ConfigError, match="not complete") as e:
        parse_cluster_spec(f)
    assert "nodes.0.node_id: Field required" in (e.value.why or "")


def test_dead_nodes_and_busy_gpus(model_facts: Callable[[str], ModelFacts]) -> None:
    # Another process holds 20 GiB of each GPU.
    node = GPU_NODE.model_copy(update={"gpus": [_gpu(i, 20 * GIB) for i in range(4)]})
    busy = _inventory(node, node.model_copy(update={"ip": "10.0.0.3", "alive": False}))
    c = cluster_from_inventory(busy)
    assert [n.name for n in c.nodes] == ["10.0.0.1"]
    assert c.nodes[0].gpu_memory_free_bytes == 46068 * 1024**2 - 20 * GIB
    free = 46068 * 1024**2 - 20 * GIB
    lay = plan(model_facts("qwen3-0.6b"), c, max_model_len=4096).plan
    assert lay is not None
    # Planned around the memory others hold: vLLM's share fits in what is free.
    assert any("free" in w and "planned with" in w for w in lay.warnings), lay.warnings
    assert lay.gpu_memory_utilization < 0.9
    assert lay.gpu_memory_utilization * 46068 * 1024**2 <= free - GIB
    # A share the user pinned is kept, and a layout it cannot start with is refused.
    with pytest.raises(PlanError) as e:
        plan(model_facts("qwen3-0.6b"), c, max_model_len=4096, gpu_memory_utilization=0.9)
    assert "free" in e.value.message() and "other processes hold" in e.value.message()
    with pytest.raises(ConfigError, match="alive"):
        cluster_from_inventory(_inventory(GPU_NODE.model_copy(update={"alive": False})))


def test_doctor_says_whether_a_model_still_fits(model_facts: Callable[[str], ModelFacts]) -> None:
    # `raylm doctor --model NAME`: the plan `raylm serve NAME` would run on the cluster as it
    # is now, GPU memory held by other processes included.
    from raylm.cluster.doctor.fit import check_model_fit

    facts = model_facts("qwen3-0.6b")
    free = check_model_fit("qwen", facts, INVENTORY)
    assert free.status == "PASS" and free.finding.startswith("qwen fits as "), free
    assert "gpu_memory_utilization 0.9" in free.finding
    node = GPU_NODE.model_copy(update={"gpus": [_gpu(i, 20 * GIB) for i in range(4)]})
    busy = check_model_fit("qwen", facts, _inventory(node))
    assert busy.status == "WARN" and "other processes hold" in busy.finding, busy
    nearly_all = 46068 * 1024**2 - GIB // 2
    node = GPU_NODE.model_copy(update={"gpus": [_gpu(i, nearly_all) for i in range(4)]})
    full = check_model_fit("qwen", facts, _inventory(node))
    assert full.status == "FAIL" and full.finding.startswith("qwen does not fit: "), full
    assert "GiB" in full.finding and full.fix, full
    cpu = check_model_fit("qwen", facts, _inventory(CPU_NODE))
    assert cpu.status == "PASS" and "no GPU" in cpu.finding
