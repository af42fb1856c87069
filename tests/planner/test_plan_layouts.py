"""Layouts for the seeds' models and clusters, the constraints and the objectives."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from raylm.config import ServeSpec
from raylm.errors import PlanError
from raylm.models.facts import ModelFacts, facts_from_config
from raylm.models.weights import read_model_facts
from raylm.planner import (
    Layout,
    PlanResult,
    check_layout,
    parse_cluster_spec,
    plan,
)
from raylm.planner.memory import kv_bytes_per_token, weight_bytes_per_device
from raylm.serve.deployment import deployment_from_layout
from raylm.serve.engine import printable

GIB = 1024**3
MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
QWEN32 = "qwen2.5-32b-instruct-gptq-int4"
R1_70B = "deepseek-r1-distill-llama-70b"


def _all(r: PlanResult) -> list[Layout]:
    assert r.plan is not None
    return [r.plan, *r.alternatives]


def _find(r: PlanResult, tp: int, pp: int) -> Layout | None:
    return next(
        (x for x in _all(r) if (x.tensor_parallel_size, x.pipeline_parallel_size) == (tp, pp)),
        None,
    )


def test_seed_004_layout_is_feasible_but_replicas_win(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    facts = model_facts(QWEN32)
    r = plan(facts, parse_cluster_spec("2x4xL20"), max_model_len=4096)
    seed = _find(r, 4, 2)
    assert seed is not None, [x.reason for x in r.rejected]
    assert (seed.replicas, seed.nodes_per_replica, seed.gpus_per_node) == (1, 2, 4)
    assert seed.quantization == "gptq_marlin" and seed.dtype == "float16"
    best = r.plan
    assert best is not None
    # ~19 GB of 4-bit weights fit one 48 GB card: many small replicas, not one wide one.
    assert best.replicas > 1 and best.gpus_per_replica < 8
    assert best.replicas * best.gpus_per_replica <= 8
    assert best.score > seed.score
    assert seed in r.alternatives
    # TP=3 cannot split 40 heads; the rejection says so.
    assert any(x.reason.startswith("TP=3: 40 attention heads") for x in r.rejected)


def test_seed_004_layout_when_asked_and_its_command(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    facts = model_facts(QWEN32)
    r = plan(
        facts,
        parse_cluster_spec("2x4xL20"),
        max_model_len=4096,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
    )
    assert r.plan is not None and r.alternatives == []
    # Printed through the builder serve launches with: vLLM's own multi-node mode by
    # default (one line per node), or the seeds' Ray executor.
    ref = "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4"
    mp = deployment_from_layout(
        r.plan, ServeSpec(), model_path=ref, served_model_name="q"
    ).planned_launches()
    lines = [" ".join(printable(x)) for x in mp]
    assert [printable(x)[:3] for x in mp] == [["vllm", "serve", ref]] * 2
    for part in ("--tensor-parallel-size 4", "--pipeline-parallel-size 2", "--max-model-len 4096"):
        assert all(part in line for line in lines)
    assert "--nnodes 2 --node-rank 0" in lines[0] and "--headless" not in lines[0]
    assert "--nnodes 2 --node-rank 1 --headless" in lines[1]
    (ray,) = deployment_from_layout(
        r.plan, ServeSpec(executor="ray"), model_path=ref, served_model_name="q"
    ).planned_launches()
    assert "--distributed-executor-backend ray" in " ".join(printable(ray))
    assert "--nnodes" not in printable(ray)
    # The user's own engine args pass through untouched, after raylm's.
    spec = ServeSpec(engine_args={"enable-prefix-caching": True, "max-num-seqs": 8})
    (mine, _) = deployment_from_layout(
        r.plan, spec, model_path="m", served_model_name="m"
    ).planned_launches()
    assert printable(mine)[-7:] == [
        "--enable-prefix-caching",
        "--max-num-seqs",
        "8",
        "--gpu-memory-utilization",
        "0.9",
        "--middleware",
        "raylm.serve.replica_auth.ReplicaAuth",
    ]
    # kv-aware (the default) turns the events on, but a plan has no private socket for
    # them yet, and vLLM's default endpoint would listen on every interface.
    assert spec.routing == "kv-aware" and "--kv-events-config" not in printable(mine)


def test_70b_bf16_fits_one_8x80gb_node(model_facts: Callable[[str], ModelFacts]) -> None:
    facts = model_facts(R1_70B)
    r = plan(facts, parse_cluster_spec("1x8x80GB"), max_model_len=8192)
    tp8 = _find(r, 8, 1)
    assert tp8 is not None and tp8.replicas == 1 and tp8.nodes_per_replica == 1
    # ~141 GB of bf16 over 8 GPUs: about 17.6 GB of weights each (embedding on the shard too).
    assert tp8.weight_bytes_per_gpu == pytest.approx(141.1e9 / 8, rel=0.02)
    assert tp8.kv_cache_tokens_per_replica >= 8192 and tp8.max_concurrent_seqs >= 1
    # TP=1 would need 141 GB on one card.
    assert any(x.reason.startswith("TP=1, PP=1:") for x in r.rejected)
    # Latency: the seed's TP=8 on one node.
    lat = plan(facts, parse_cluster_spec("1x8x80GB"), max_model_len=8192, objective="latency")
    assert lat.plan is not None
    assert (lat.plan.tensor_parallel_size, lat.plan.pipeline_parallel_size) == (8, 1)


def test_70b_bf16_is_refused_on_one_80gb_card_with_numbers(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    facts = model_facts(R1_70B)
    with pytest.raises(PlanError) as ei:
        plan(facts, parse_cluster_spec("1x1x80GB"), max_model_len=8192)
    e = ei.value
    assert e.available_bytes_per_gpu == int(80 * GIB * 0.9)
    assert e.needed_bytes_per_gpu is not None and e.needed_bytes_per_gpu > facts.weight_bytes
    msg = e.message()
    assert "does not fit" in msg and "GiB" in msg
    assert "quantized" in msg and "GPUs" in msg and "--max-model-len" in msg


def test_demo_model_heads(demo_dir: Path) -> None:
    facts = read_model_facts(demo_dir)
    assert check_layout(facts, 3, 1) == []
    assert check_layout(facts, 1, 1) == []
    reasons = check_layout(facts, 2, 1)
    assert "TP=2: 9 attention heads are not divisible by 2" in reasons
    assert check_layout(facts, 1, 31) == ["PP=31: more pipeline stages than the model's 30 layers"]
    r = plan(facts, parse_cluster_spec("1x4xL20"))
    assert _find(r, 3, 1) is not None
    assert _find(r, 2, 1) is None
    assert any("TP=2: 9 attention heads are not divisible by 2" in x.reason for x in r.rejected)
    with pytest.raises(PlanError, match="9 attention heads are not divisible by 2"):
        plan(facts, parse_cluster_spec("1x4xL20"), tensor_parallel_size=2)


def test_kv_heads_are_replicated_beyond_their_count(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    f = model_facts(R1_70B)  # 8 KV heads, head_dim 128, 80 layers, bf16
    assert kv_bytes_per_token(f, "bfloat16", 1, 1) == 2 * 80 * 8 * 128 * 2
    assert kv_bytes_per_token(f, "bfloat16", 8, 1) == 2 * 80 * 1 * 128 * 2
    assert kv_bytes_per_token(f, "bfloat16", 16, 1) == 2 * 80 * 1 * 128 * 2
    assert kv_bytes_per_token(f, "bfloat16", 8, 2) == 2 * 40 * 1 * 128 * 2
    assert check_layout(f, 16, 1) == []  # 64 heads / 16; 16 is a multiple of 8 KV heads
    assert check_layout(f, 6, 1)[0].startswith("TP=6: 64 attention heads")


def test_tied_embedding_is_a_second_copy_across_stages(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    f = model_facts("qwen3-0.6b")
    one = weight_bytes_per_device(f, "bfloat16", 1, 1)
    two = weight_bytes_per_device(f, "bfloat16", 1, 2)
    assert one == f.weight_bytes
    body_half = f.body_bytes * 14 / 28
    assert two == int(body_half + f.embedding_bytes)


def test_bf16_needs_ampere(model_facts: Callable[[str], ModelFacts]) -> None:
    facts = model_facts("llama-3-8b-instruct")
    v100 = plan(facts, parse_cluster_spec("1x1xV100"), max_model_len=4096).plan
    assert v100 is not None and v100.dtype == "float16"
    assert any("no bfloat16" in w and "7.0" in w for w in v100.warnings)
    a100 = plan(facts, parse_cluster_spec("1x1xA100"), max_model_len=4096).plan
    assert a100 is not None and a100.dtype == "bfloat16" and a100.warnings == []


def test_fp8_refused_before_ampere() -> None:
    cfg = json.loads((MODELS / "llama-3-8b-instruct.json").read_text())
    facts = facts_from_config({**cfg, "quantization_config": {"quant_method": "fp8"}})
    with pytest.raises(PlanError, match=r"FP8 weights need compute capability 8\.0"):
        plan(facts, parse_cluster_spec("1x2xT4"), max_model_len=2048)


def test_tp_stays_inside_a_node_unless_allowed(model_facts: Callable[[str], ModelFacts]) -> None:
    facts = model_facts(R1_70B)
    cluster = parse_cluster_spec("2x1x80GB")
    r = plan(facts, cluster, max_model_len=4096)
    assert _find(r, 2, 1) is None
    assert any("TP=2: tensor parallel must stay inside a node" in x.reason for x in r.rejected)
    assert _find(r, 1, 2) is not None  # PP across the two nodes is the answer
    allowed = plan(facts, cluster, max_model_len=4096, allow_cross_node_tp=True)
    cross = _find(allowed, 2, 1)
    assert cross is not None and any("InfiniBand" in w for w in cross.warnings)


def test_uneven_nodes_get_equal_whole_stages(model_facts: Callable[[str], ModelFacts]) -> None:
    facts = model_facts(R1_70B)
    # One node of 4 and one of 2: TP=2 x PP=3 would need 3 nodes of 2 GPUs.
    r = plan(facts, parse_cluster_spec("1x4xA100,1x2xA100"), max_model_len=4096)
    rej = [x for x in r.rejected if (x.tensor_parallel_size, x.pipeline_parallel_size) == (2, 3)]
    assert rej and "equal whole stages" in rej[0].reason
    tp2pp2 = _find(r, 2, 2)
    assert tp2pp2 is not None and tp2pp2.gpus_per_node in (2, 4)


def test_context_objective_finds_the_longest_context(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    facts = model_facts("qwen3-0.6b")
    r = plan(facts, parse_cluster_spec("1x1x4GB"), objective="context")
    assert r.plan is not None
    # 1.2 GB of weights on a 4 GB card leaves room for only part of the 40960 context.
    assert 2048 <= r.plan.max_model_len < 40960
    assert r.plan.max_model_len <= r.plan.kv_cache_tokens_per_replica < 2 * r.plan.max_model_len
    with pytest.raises(PlanError, match="fewer than one 40960-token sequence"):
        plan(facts, parse_cluster_spec("1x1x4GB"), max_model_len=40960)
    # Two cards: PP=2 halves the weights and KV per token on each, so the context grows.
    two = plan(facts, parse_cluster_spec("1x2x4GB"), objective="context").plan
    assert two is not None and two.max_model_len > r.plan.max_model_len


def test_throughput_lowers_the_default_context_and_says_so(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    facts = model_facts("qwen3-0.6b")
    best = plan(facts, parse_cluster_spec("1x1x4GB")).plan
    assert best is not None and best.max_model_len < 40960
    assert any("max_model_len lowered" in w for w in best.warnings)
    assert best.max_model_len_lowered


def test_a_lowered_context_ranks_after_every_full_context(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    facts = model_facts("qwen3-0.6b")
    layouts = _all(plan(facts, parse_cluster_spec("1x4x4GB")))
    flags = [x.max_model_len_lowered for x in layouts]
    assert False in flags and True in flags and flags == sorted(flags)
    # The flag, not the warning text, ranks; both say the same thing.
    for x in layouts:
        assert x.max_model_len_lowered == any("max_model_len lowered" in w for w in x.warnings)
    # Full context wins even against a higher throughput estimate.
    assert min(x.score for x in layouts if not x.max_model_len_lowered) < max(
        x.score for x in layouts if x.max_model_len_lowered
    )
    # Kept out of dumps: `raylm plan --json` keeps its keys.
    assert "max_model_len_lowered" not in layouts[0].model_dump(mode="json")


def test_bad_requests(model_facts: Callable[[str], ModelFacts]) -> None:
    facts = model_facts("llama-3-8b-instruct")
    c = parse_cluster_spec("1x8xH100")
    with pytest.raises(PlanError, match="exceeds"):
        plan(facts, c, max_model_len=10**6)
    with pytest.raises(PlanError, match="objective"):
        plan(facts, c, objective="cheapest")
    with pytest.raises(PlanError, match="out of range"):
        plan(facts, c, gpu_memory_utilization=1.5)
    with pytest.raises(PlanError, match="only 1 replica"):
        plan(facts, c, tensor_parallel_size=8, replicas=2)
    with pytest.raises(PlanError, match="does not fit"):
        plan(facts, c, tensor_parallel_size=16)
    r = plan(facts, c, tensor_parallel_size=2, replicas=3)
    assert r.plan is not None and r.plan.replicas == 3


def test_8b_on_8_h100_is_8_replicas(model_facts: Callable[[str], ModelFacts]) -> None:
    # The report: a 7-8B model on 8 H100s gains ~8x from 8 replicas, 1.16x from TP=8.
    r = plan(model_facts("llama-3-8b-instruct"), parse_cluster_spec("1x8xH100"))
    assert r.plan is not None
    assert (r.plan.tensor_parallel_size, r.plan.replicas) == (1, 8)
    tp8 = _find(r, 8, 1)
    assert tp8 is not None and tp8.score < r.plan.score / 2


def test_kv_starved_replicas_do_not_win(model_facts: Callable[[str], ModelFacts]) -> None:
    # 70B on 8 nodes x 8 H100: TP=2 fits 32 replicas but leaves 4.5 GiB of KV per GPU;
    # TP=4 (16 replicas, 59 sequences of 8192 each) is the better layout.
    r = plan(model_facts(R1_70B), parse_cluster_spec("8x8xH100"), max_model_len=8192)
    assert r.plan is not None
    assert (r.plan.tensor_parallel_size, r.plan.pipeline_parallel_size) == (4, 1)
    tp2 = _find(r, 2, 1)
    assert tp2 is not None and tp2.replicas == 32 and tp2.score < r.plan.score
