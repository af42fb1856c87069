"""The desired state the controller reconciles: one model, its layout, its replicas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DeploymentConfig(BaseModel):
    """Everything the controller needs to keep `replicas` copies of a model serving."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Deployment name (controller actor 'raylm-controller-<name>').")
    model_path: str = Field(description="Model directory on nodes without an entry below.")
    node_model_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Per node IP, the verified model directory there (stores may differ).",
    )
    allowed_node_ips: list[str] | None = Field(
        default=None,
        description="Nodes replicas may use (those with a verified copy); None: any node.",
    )
    served_model_name: str = Field(description="Name clients use in `model`.")
    replicas: int = Field(ge=1, description="Replicas to keep serving.")
    tensor_parallel_size: int = Field(ge=1, description="TP per replica.")
    pipeline_parallel_size: int = Field(ge=1, description="PP per replica.")
    nodes_per_replica: int = Field(default=1, ge=1, description="Nodes one replica spans.")
    device: Literal["cpu", "cuda"] = Field(description="What the replicas compute on.")
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs each node of a replica holds.")
    cpus_per_node: int = Field(
        default=1, ge=0, description="CPU cores each node of a replica holds (CPU replicas)."
    )
    dtype: str = Field(default="auto", description="dtype handed to vLLM.")
    max_model_len: int | None = Field(default=None, description="Context length, if set.")
    bind_host: str | None = Field(
        default=None,
        description="Address replicas listen on; None: their node's IP (local runs: 127.0.0.1).",
    )
    executor: Literal["mp", "ray"] = Field(default="mp", description="vLLM executor backend.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="User's vLLM engine arguments, untouched."
    )
    startup_timeout_s: float = Field(default=900.0, description="Time a replica may take to load.")
    probe_interval_s: float = Field(default=5.0, description="Seconds between health probes.")
    probe_timeout_s: float = Field(default=30.0, description="Deadline of one probe generation.")
    probe_strikes: int = Field(default=3, description="Failed probes in a row before restart.")
    max_backoff_s: float = Field(default=30.0, description="Longest wait between restarts.")

    @property
    def controller_name(self) -> str:
        return controller_actor_name(self.name)


CONTROLLER_NAMESPACE = "raylm"


def controller_actor_name(deployment: str) -> str:
    return f"raylm-controller-{deployment}"
