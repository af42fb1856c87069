"""The desired state the controller reconciles: one model, its layout, its replicas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from raylm.autoscaling import Autoscaling
from raylm.serve.engine import RankLaunch, resolve_dtype
from raylm.serve.health import Probing

if TYPE_CHECKING:
    from raylm.config import ServeSpec
    from raylm.planner import Layout


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
    replica_api_key: SecretStr | None = Field(
        default=None,
        description="Private key the replicas require on every path but /health (see "
        "raylm.serve.replica_auth); only the gateway and the probes hold it.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="User's vLLM engine arguments, untouched."
    )
    probing: Probing = Field(description="How each replica's health is judged (from the spec).")
    kv_events: bool = Field(
        default=False,
        description="Replicas publish KV-cache events (the spec's routing is kv-aware).",
    )
    max_backoff_s: float = Field(default=30.0, description="Longest wait between restarts.")
    version: int = Field(
        default=1, ge=1, description="The model's version: 1, then one more per rolling update."
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Its autoscaling bounds and targets at start (raylm.autoscaling); None: "
        "`replicas` stays until changed by hand.",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a replica removed by a scale-down may finish the requests its "
        "engine holds before it is stopped.",
    )

    @property
    def controller_name(self) -> str:
        return controller_actor_name(self.name)

    def rank_launch(
        self,
        rank: int,
        *,
        node_ip: str | None = None,
        host: str | None = None,
        port: int | None = None,
        master_addr: str | None = None,
        master_port: int | None = None,
    ) -> RankLaunch:
        """What rank `rank` of a replica on `node_ip` runs; the address fields (where rank 0
        serves, the rendezvous) stay None in a plan."""
        return RankLaunch(
            model_path=self.node_model_paths.get(node_ip or "", self.model_path),
            served_model_name=self.served_model_name,
            host=host,
            port=port,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            nnodes=self.nodes_per_replica,
            node_rank=rank,
            master_addr=master_addr if self.nodes_per_replica > 1 else None,
            master_port=master_port if self.nodes_per_replica > 1 else None,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            executor=self.executor,
            device=self.device,
            engine_args=self.engine_args,
            kv_events=self.kv_events,
        )

    def planned_launches(self) -> list[RankLaunch]:
        """One launch per rank of a replica, as `raylm plan` prints them."""
        return [self.rank_launch(r) for r in range(self.nodes_per_replica)]


def deployment_from_layout(
    layout: Layout, spec: ServeSpec, *, model_path: str, served_model_name: str
) -> DeploymentConfig:
    """The deployment `raylm serve` runs for a planner layout and a spec (what `raylm plan`
    prints, through the same launches)."""
    device: Literal["cpu", "cuda"] = "cuda" if layout.accelerator == "gpu" else "cpu"
    ray_executor = spec.executor == "ray"
    engine_args = dict(spec.engine_args)
    if device == "cuda":
        # The share the layout was planned with (serve passes the same: planning.apply_plan).
        engine_args["gpu-memory-utilization"] = layout.gpu_memory_utilization
    return DeploymentConfig(
        name=spec.name,
        model_path=model_path,
        served_model_name=spec.served_model_name or served_model_name,
        replicas=layout.replicas,
        tensor_parallel_size=layout.tensor_parallel_size,
        pipeline_parallel_size=layout.pipeline_parallel_size,
        # vLLM's Ray executor places a replica's GPU workers itself, from one process.
        nodes_per_replica=1 if ray_executor else layout.nodes_per_replica,
        device=device,
        gpus_per_node=0 if ray_executor else layout.gpus_per_node,
        dtype=resolve_dtype(spec.dtype, device),
        max_model_len=layout.max_model_len,
        executor=spec.executor,
        engine_args=engine_args,
        probing=spec.probing(),
        drain_timeout_s=spec.drain_timeout_s,
        autoscaling=spec.autoscaling,
        kv_events=spec.routing == "kv-aware",
    )


CONTROLLER_NAMESPACE = "raylm"


def controller_actor_name(deployment: str) -> str:
    return f"raylm-controller-{deployment}"
