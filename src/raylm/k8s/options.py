"""What `raylm k8s render` is asked for beyond the serve spec: where the manifests go in
Kubernetes (namespace, image, store, Service), each a flag of the command."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raylm.errors import ConfigError

DEFAULT_GPU_IMAGE = "raylm/raylm-gpu:latest"
"""The image `deploy/docker/Dockerfile.gpu` builds: vLLM's official image plus raylm."""

STORE_ROOT = "/var/lib/raylm"
"""RAYLM_HOME in every pod; the model store is its `models` directory."""

RAY_POD_PORTS = {6379: "GCS", 8265: "dashboard", 10001: "client", 8080: "metrics", 52365: "agent"}
"""Ports KubeRay's `ray start` takes in every Ray pod; the gateway cannot have them."""

# DNS-1123 labels: the names Kubernetes accepts for Services, Secrets and groups.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ModelStore(BaseModel):
    """Where the pods keep the model store: a volume every Ray pod mounts at the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pvc", "hostpath"] = Field(
        description="pvc: one ReadWriteMany claim shared by every pod (the head pulls the "
        "model once); hostpath: a directory of each machine (every pod pulls or verifies "
        "its machine's copy, as `raylm model sync` does on bare metal)."
    )
    claim: str | None = Field(
        default=None,
        description="An existing claim to use (`pvc:NAME`); None renders a new one.",
    )
    path: str | None = Field(default=None, description="The machines' directory (hostpath).")

    @classmethod
    def parse(cls, text: str) -> ModelStore:
        """`pvc`, `pvc:CLAIM` or `hostpath:/DIR`, as typed after --store."""
        kind, _, arg = text.strip().partition(":")
        if kind == "pvc" and (not arg or _DNS_LABEL.match(arg)):
            return cls(kind="pvc", claim=arg or None)
        if kind == "hostpath" and arg.startswith("/"):
            return cls(kind="hostpath", path=arg)
        raise ConfigError(
            f"Bad --store {text!r}",
            why="it takes pvc (a new claim), pvc:CLAIM (an existing one) or hostpath:/DIR",
            fix="e.g. --store pvc, --store pvc:models, --store hostpath:/data/raylm",
        )


class K8sOptions(BaseModel):
    """The Kubernetes side of a rendered deployment (`raylm k8s render`'s flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="Name of the RayCluster; the other objects are named after it "
        "(`<name>-raylm`, `<name>-models`, ...). A DNS-1035 label of at most 40 characters."
    )
    namespace: str = Field(default="default", description="Namespace of every object.")
    image: str = Field(
        default=DEFAULT_GPU_IMAGE,
        description="Image of every Ray pod: vLLM and raylm at the versions the cluster runs.",
    )
    store: ModelStore = Field(
        default_factory=lambda: ModelStore(kind="pvc"), description="The model store's volume."
    )
    store_size_gib: int | None = Field(
        default=None,
        ge=1,
        description="Size of a new store claim; None: the model's weights plus a quarter, "
        "at least 10 GiB.",
    )
    storage_class: str | None = Field(
        default=None,
        description="StorageClass of a new claim (one that offers ReadWriteMany); None: the "
        "cluster's default.",
    )
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP",
        description="Type of the endpoint's Service; ClusterIP keeps it inside the cluster.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the gateway.")
    shm_gib: int = Field(
        default=16, ge=1, description="Size of each pod's /dev/shm (a memory emptyDir)."
    )
    iface: str = Field(
        default="eth0",
        description="Pod network interface for NCCL and Gloo (eth0 under most CNIs; the "
        "host's interface with --host-network).",
    )
    host_network: bool = Field(
        default=False,
        description="Run the Ray pods on their machines' network (NCCL at host speed, as seed "
        "004 suggests); the pods then take the machines' ports.",
    )
    model_source: Literal["hf", "modelscope"] = Field(
        default="hf", description="Hub the pods pull a hub-id model from."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Labels every Ray pod's machine must have (e.g. the GPU nodes' pool).",
    )

    @field_validator("port")
    @classmethod
    def _not_rays(cls, v: int) -> int:
        if v in RAY_POD_PORTS:
            raise ValueError(
                f"{v} is Ray's {RAY_POD_PORTS[v]} port in every KubeRay pod; give the gateway "
                "another (8000 by default)"
            )
        return v

    @field_validator("name")
    @classmethod
    def _dns_1035(cls, v: str) -> str:
        # KubeRay allows 53; the longest derived name adds "-head-svc" (9) and more.
        if len(v) > 40 or not _DNS_LABEL.match(v) or not v[0].isalpha():
            raise ValueError(
                f"{v!r} is not a name Kubernetes accepts here: lowercase letters, digits and "
                "'-', starting with a letter, at most 40 characters"
            )
        return v

    @field_validator("namespace")
    @classmethod
    def _dns_1123(cls, v: str) -> str:
        if len(v) > 63 or not _DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes namespace name")
        return v

    def object_name(self, suffix: str) -> str:
        """`<name>-<suffix>`: how every object but the RayCluster is named."""
        return f"{self.name}-{suffix}"
