"""Whether a model's planned layout fits the cluster as it is now, GPU memory that other
processes hold included: the `model-fit` check of `raylm doctor --model NAME`. Pure: the
runner hands in the model's facts and the live inventory."""

from __future__ import annotations

from raylm.cluster.doctor.report import Check, CheckStatus, make_check
from raylm.cluster.inventory import ClusterInventory
from raylm.errors import PlanError
from raylm.models.facts import ModelFacts
from raylm.planner import cluster_from_inventory, plan


def check_model_fit(name: str, facts: ModelFacts, inventory: ClusterInventory) -> Check:
    """PASS with the layout `raylm serve NAME` would run; WARN when it fits only by taking
    less memory (others hold some) or a shorter context; FAIL with the planner's numbers."""
    if not any(n.gpus for n in inventory.nodes if n.alive):
        return make_check(
            "model-fit",
            "cluster",
            CheckStatus.PASS,
            f"{name}: no GPU in the cluster, so `raylm serve` runs the layout you give it "
            "(one replica unless --replicas/--tp/--pp say otherwise)",
        )
    try:
        chosen = plan(facts, cluster_from_inventory(inventory)).plan
    except PlanError as e:
        return make_check(
            "model-fit",
            "cluster",
            CheckStatus.FAIL,
            f"{name} does not fit: {e.what}" + (f" ({e.why})" if e.why else ""),
            e.fix + (f": {e.command}" if e.command else ""),
        )
    assert chosen is not None  # plan() raises when nothing fits
    layout = f"{chosen.shape()}, gpu_memory_utilization {chosen.gpu_memory_utilization:g}"
    if chosen.warnings:
        return make_check(
            "model-fit",
            "cluster",
            CheckStatus.WARN,
            f"{name} fits as {layout}, but: " + "; ".join(chosen.warnings),
            "stop what holds GPU memory (see gpu-memory) for the full layout",
        )
    return make_check("model-fit", "cluster", CheckStatus.PASS, f"{name} fits as {layout}")
