"""`raylm serve` takes the planner's layout when TP/PP/replicas are not given, and refuses
given sizes that cannot work, before anything loads (GPU clusters, described here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylm.cluster.nodes import NodeView
from raylm.config import ServeSpec
from raylm.errors import PlanError
from raylm.models.weights import read_model_facts
from raylm.planner import parse_cluster_spec
from raylm.serve.placement import place_plan
from raylm.serve.planning import apply_plan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_unset_sizes_come_from_the_plan() -> None:
    facts = read_model_facts(FIXTURES / "qwen2.5-32b-instruct-gptq-int4.json")
    spec, chosen, words = apply_plan(
        ServeSpec(max_model_len=4096), facts, parse_cluster_spec("2x4xL20")
    )
    assert spec.replicas and spec.tensor_parallel_size and spec.pipeline_parallel_size
    gpus = spec.replicas * spec.tensor_parallel_size * spec.pipeline_parallel_size
    assert gpus <= 8 and spec.max_model_len == 4096
    assert f"{spec.replicas} replica(s)" in words and "KV-cache tokens" in words
    assert chosen is not None and chosen.replicas == spec.replicas


def test_given_sizes_are_kept_when_they_work() -> None:
    facts = read_model_facts(FIXTURES / "qwen2.5-32b-instruct-gptq-int4.json")
    given = ServeSpec(tensor_parallel_size=4, pipeline_parallel_size=2, max_model_len=4096)
    spec, _, _ = apply_plan(given, facts, parse_cluster_spec("2x4xL20"))
    assert (spec.tensor_parallel_size, spec.pipeline_parallel_size, spec.replicas) == (4, 2, 1)


def test_sizes_that_cannot_work_are_refused() -> None:
    facts = read_model_facts(FIXTURES / "smollm2-135m-instruct.json")
    with pytest.raises(PlanError) as e:
        apply_plan(ServeSpec(tensor_parallel_size=2), facts, parse_cluster_spec("1x4xL20"))
    assert "9 attention heads are not divisible by 2" in e.value.message()


def _gpu_node(ip: str, gpus: int) -> NodeView:
    res = {"CPU": 32.0, "GPU": float(gpus)}
    return NodeView(node_id=ip, ip=ip, alive=True, is_head=False, resources=res)


def test_serve_places_the_plan_it_printed_on_the_nodes_it_chose() -> None:
    # Serve places the planned shape on the planned nodes only; a node the plan did not
    # choose (here one with 8 GPUs of another kind) is left out.
    facts = read_model_facts(FIXTURES / "qwen2.5-32b-instruct-gptq-int4.json")
    _, chosen, _ = apply_plan(ServeSpec(max_model_len=4096), facts, parse_cluster_spec("2x4xL20"))
    assert chosen is not None
    ips = [f"10.0.0.{i}" for i in range(1, len(chosen.nodes) + 1)]
    layout = chosen.model_copy(update={"nodes": ips})
    nodes = [_gpu_node(ip, 4) for ip in ips] + [_gpu_node("10.0.0.9", 8)]
    p = place_plan(nodes, layout)
    assert (p.replicas, p.nodes_per_replica, p.gpus_per_node) == (
        layout.replicas,
        layout.nodes_per_replica,
        layout.gpus_per_node,
    )
    # A planned node gone, and the rest too small: refused with the plan and what is missing.
    with pytest.raises(PlanError) as e:
        place_plan(nodes[1:], layout.model_copy(update={"replicas": len(ips) * 4}))
    assert "cannot be placed" in e.value.message() and ips[0] in e.value.message()
