"""The planner: pure functions from model facts and a cluster to a parallel layout.

Never imports Ray or vLLM, so it runs anywhere, before anything loads.
"""

from raylm.planner.calibration import VllmLoadFigures, parse_vllm_load_log
from raylm.planner.cluster import (
    ClusterSpec,
    GpuType,
    NodeSpec,
    cluster_from_inventory,
    find_gpu,
    gpu_table,
    parse_cluster_spec,
)
from raylm.planner.layout import Layout, PlanResult, Rejection
from raylm.planner.memory import PlannerConstants
from raylm.planner.rank import OBJECTIVES
from raylm.planner.search import plan
from raylm.planner.shapes import check_layout
from raylm.planner.usage import gpus_by_node

__all__ = [
    "OBJECTIVES",
    "ClusterSpec",
    "GpuType",
    "Layout",
    "NodeSpec",
    "PlanResult",
    "PlannerConstants",
    "Rejection",
    "VllmLoadFigures",
    "check_layout",
    "cluster_from_inventory",
    "find_gpu",
    "gpu_table",
    "gpus_by_node",
    "parse_cluster_spec",
    "parse_vllm_load_log",
    "plan",
]
