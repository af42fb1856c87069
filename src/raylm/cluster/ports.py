"""The fixed ports raylm gives Ray, so one firewall rule can name them all."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field


class RayPorts(BaseModel):
    """Ray's listening ports on every node raylm starts (Ray would otherwise pick random ones)."""

    model_config = ConfigDict(extra="forbid")

    gcs: int = Field(default=6379, description="GCS server (head only); the address workers join.")
    dashboard: int = Field(
        default=8265, description="Dashboard HTTP (head only); 127.0.0.1 by default."
    )
    ray_client: int = Field(default=10001, description="Ray Client server (head only).")
    object_manager: int = Field(default=8076, description="Object manager (object transfers).")
    node_manager: int = Field(default=8077, description="Raylet node manager.")
    dashboard_agent_grpc: int = Field(default=8078, description="Dashboard agent gRPC.")
    runtime_env_agent: int = Field(default=8079, description="Runtime environment agent.")
    metrics_export: int = Field(default=8080, description="Prometheus metrics of this node.")
    dashboard_agent_listen: int = Field(default=52365, description="Dashboard agent HTTP.")
    min_worker: int = Field(default=10002, description="Lowest port of Ray worker processes.")
    max_worker: int = Field(default=10299, description="Highest port of Ray worker processes.")
    probe: int = Field(
        default=8099, description="TCP port `raylm doctor` opens briefly to test reachability."
    )

    collective: int = Field(
        default=8098, description="Rendezvous port of the `raylm doctor --nccl` all-reduce (head)."
    )

    def node_ports(self) -> dict[str, int]:
        """Ports every node listens on, by name (the worker range not included)."""
        return {
            "object_manager": self.object_manager,
            "node_manager": self.node_manager,
        }

    def head_ports(self) -> dict[str, int]:
        """Ports only the head listens on, by name."""
        return {"gcs": self.gcs}

    def _fixed(self) -> list[int]:
        return sorted(
            {
                self.gcs,
                self.ray_client,
                self.object_manager,
                self.node_manager,
                self.dashboard_agent_grpc,
                self.runtime_env_agent,
                self.metrics_export,
                self.dashboard_agent_listen,
                self.probe,
                self.collective,
            }
        )

    def firewall_rule(self) -> str:
        """The port list a firewall must open between the nodes."""
        return ",".join(map(str, self._fixed())) + f",{self.min_worker}-{self.max_worker}"

    def ufw_command(self, source: str) -> str:
        """The ufw line (the firewall the multi-node guides raylm's users follow set up with
        `ufw allow from IP`) that opens every port to `source`; ufw counts a range as two
        of its 15 ports, and this list has 12."""
        ports = ",".join(map(str, self._fixed())) + f",{self.min_worker}:{self.max_worker}"
        return f"sudo ufw allow proto tcp from {source} to any port {ports}"


DEFAULT_PORTS = RayPorts()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now ("0.0.0.0": on every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
