"""Placement on the nodes Ray lists (pure: no cluster): the node view, then the fit."""

from __future__ import annotations

import pytest

from raylm.cluster.nodes import NodeView, node_views
from raylm.errors import PlanError
from raylm.serve.engine import UNIPROC_ENV, RankLaunch, parse_cores, pin_to_bound_cores, rank_env
from raylm.serve.placement import Placement, fit_placement, pick_node


def _node(ip: str, cpus: int = 2, gpus: int = 0) -> NodeView:
    res = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return NodeView(node_id=ip.replace(".", ""), ip=ip, alive=True, is_head=False, resources=res)


def test_node_views_keep_only_a_restarted_nodes_alive_record() -> None:
    head = {"CPU": 2.0, "node:__internal_head__": 1.0}
    records: list[dict[str, object]] = [
        {"NodeID": "a", "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": head},
        {"NodeID": "old", "NodeManagerAddress": "10.0.0.2", "Alive": False, "Resources": {}},
        {"NodeID": "new", "NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 2}},
        {"NodeID": "gone", "NodeManagerAddress": "10.0.0.3", "Alive": False, "Resources": None},
    ]
    views = node_views(records)
    assert [(v.node_id, v.alive, v.is_head) for v in views] == [
        ("a", True, True),
        ("new", True, False),
        ("gone", False, False),
    ]
    assert (views[1].cpus, views[1].gpus) == (2, 0)


def test_gpu_replicas_take_whole_nodes_when_tp_spans_them() -> None:
    nodes = [_node("10.0.0.1", 16, 8), _node("10.0.0.2", 16, 8)]
    p = fit_placement(nodes, replicas=1, tensor_parallel_size=8, pipeline_parallel_size=2)
    assert (p.device, p.nodes_per_replica, p.gpus_per_node) == ("cuda", 2, 8)
    p = fit_placement(nodes, replicas=4, tensor_parallel_size=4, pipeline_parallel_size=1)
    assert (p.nodes_per_replica, p.gpus_per_node) == (1, 4)
    assert p.describe() == "4 replica(s) x TP=4 PP=1, 1 node(s) per replica, 4 GPU(s) per node"


def test_gpu_layouts_that_cannot_fit_say_why() -> None:
    nodes = [_node("10.0.0.1", 16, 8), _node("10.0.0.2", 16, 8)]
    with pytest.raises(PlanError, match="12 GPUs cannot be split evenly over nodes of 8 GPUs"):
        fit_placement(nodes, replicas=1, tensor_parallel_size=12, pipeline_parallel_size=1)
    with pytest.raises(PlanError, match=r"5 replica\(s\) of 1 node\(s\) x 4 GPU\(s\) do not fit"):
        fit_placement(nodes, replicas=5, tensor_parallel_size=4, pipeline_parallel_size=1)


def test_cpu_tp_spreads_over_nodes_when_no_node_has_the_cores() -> None:
    nodes = [_node(f"10.0.0.{i}") for i in (1, 2, 3)]
    p = fit_placement(nodes, replicas=1, tensor_parallel_size=3, pipeline_parallel_size=1)
    assert (p.device, p.nodes_per_replica, p.cpus_per_node) == ("cpu", 3, 1)
    # Two replicas on three 2-core nodes: one node each, all of its cores.
    p = fit_placement(nodes, replicas=2, tensor_parallel_size=1, pipeline_parallel_size=1)
    assert (p.nodes_per_replica, p.cpus_per_node) == (1, 2)
    # More replicas than nodes: the cores are shared.
    p = fit_placement(nodes[:1], replicas=2, tensor_parallel_size=1, pipeline_parallel_size=1)
    assert p.cpus_per_node == 1


def test_cpu_layouts_that_cannot_fit_say_why() -> None:
    nodes = [_node("10.0.0.1"), _node("10.0.0.2")]
    with pytest.raises(PlanError, match="PP=2 is not supported on CPU nodes"):
        fit_placement(nodes, replicas=1, tensor_parallel_size=1, pipeline_parallel_size=2)
    with pytest.raises(PlanError, match="TP=5 needs 5 cores"):
        fit_placement(nodes, replicas=1, tensor_parallel_size=5, pipeline_parallel_size=1)
    with pytest.raises(PlanError, match=r"3 replica\(s\) x 1 node\(s\) x 2 core\(s\) do not fit"):
        fit_placement(
            nodes, replicas=3, tensor_parallel_size=1, pipeline_parallel_size=1, cpus_per_replica=2
        )
    with pytest.raises(PlanError, match="no alive node"):
        fit_placement([], replicas=1, tensor_parallel_size=1, pipeline_parallel_size=1)


def _launch(tp: int, nnodes: int = 1) -> RankLaunch:
    return RankLaunch(
        model_path="/m",
        served_model_name="m",
        tensor_parallel_size=tp,
        pipeline_parallel_size=1,
        dtype="float32",
        device="cpu",
        nnodes=nnodes,
    )


def test_cpu_ranks_get_their_cores_and_a_one_rank_engine_runs_in_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = rank_env(_launch(1), node_ip="10.0.0.1", iface="eth0", cpu_cores=[2, 3])
    assert one["VLLM_CPU_OMP_THREADS_BIND"] == "2,3" and one[UNIPROC_ENV] == "0"
    assert one["GLOO_SOCKET_IFNAME"] == "eth0" and one["VLLM_HOST_IP"] == "10.0.0.1"
    # TP=2 on one node: a thread group per rank, and vLLM's own worker processes.
    two = rank_env(_launch(2), node_ip="10.0.0.1", iface=None, cpu_cores=[0, 1, 2, 3])
    assert two["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3" and UNIPROC_ENV not in two
    # TP=3 over three nodes: one rank, all of the node's cores, still vLLM's processes.
    spread = rank_env(_launch(3, nnodes=3), node_ip="10.0.0.2", iface=None, cpu_cores=[0, 1])
    assert spread["VLLM_CPU_OMP_THREADS_BIND"] == "0,1" and UNIPROC_ENV not in spread
    assert parse_cores("0,2-3") == [0, 2, 3] and parse_cores("x") == []
    # The launcher pins a one-process engine to its cores.
    pinned: list[set[int]] = []
    monkeypatch.setattr("os.sched_setaffinity", lambda pid, cores: pinned.append(set(cores)))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")
    monkeypatch.setenv(UNIPROC_ENV, "0")
    assert pin_to_bound_cores() == [1] and pinned == [{1}]
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    assert pin_to_bound_cores() == []


def test_node_picking_spreads_replicas_and_respects_room_and_limits() -> None:
    a, b, c = _node("10.0.0.1", 4), _node("10.0.0.2", 4), _node("10.0.0.3", 1)
    need = {"CPU": 2.0}
    # Nothing placed yet: the node with the most room left after the rank.
    assert pick_node([c, a, b], need, [], exclude=set(), allowed=None) in {"10001", "10002"}
    # One replica on a: the next goes to b (spread), though a still has room.
    assert pick_node([a, b], need, [["10001"]], exclude=set(), allowed=None) == "10002"
    # Both full: no room anywhere; c never had room for 2 cores.
    full = [["10001"], ["10001"], ["10002"], ["10002"]]
    assert pick_node([a, b, c], need, full, exclude=set(), allowed=None) is None
    # A suspect node is skipped, and so is one without a verified copy of the model.
    assert pick_node([a, b], need, [], exclude={"10001"}, allowed=None) == "10002"
    assert pick_node([a, b], need, [], exclude=set(), allowed=["10.0.0.1"]) == "10001"


def test_models_of_one_deployment_leave_each_other_room() -> None:
    from raylm.config import ServeSpec
    from raylm.serve.deployment import DeploymentConfig
    from raylm.serve.planning import _less
    from raylm.serve.together import take

    a, b = _node("10.0.0.1", 8, gpus=8), _node("10.0.0.2", 8, gpus=8)
    config = DeploymentConfig(
        name="d",
        model_path="/m",
        served_model_name="first",
        replicas=3,
        tensor_parallel_size=4,
        pipeline_parallel_size=1,
        device="cuda",
        gpus_per_node=4,
        probing=ServeSpec().probing(),
    )
    held: dict[str, dict[str, float]] = {}
    take(held, config, Placement("cuda", 3, 4, 1, 1, 0, 4), [a, b])
    # Three replicas of 4 GPUs, each on the node with the most room: 8 + 4 GPUs held.
    assert sorted(h["GPU"] for h in held.values()) == [4.0, 8.0]
    left = {n.ip: n.gpus for n in _less([a, b], held)}
    assert sorted(left.values()) == [0, 4]
    # The controller sees the other model's ranks too: only the node with 4 free fits.
    used = {n.node_id: held[n.ip] for n in (a, b)}
    free = next(n for n in (a, b) if left[n.ip] == 4)
    assert pick_node([a, b], {"GPU": 4.0}, [], exclude=set(), allowed=None, used=used) == (
        free.node_id
    )
    assert pick_node([a, b], {"GPU": 8.0}, [], exclude=set(), allowed=None, used=used) is None
