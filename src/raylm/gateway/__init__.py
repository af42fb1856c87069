"""The HTTP front door: OpenAI routes passed through to replicas, native routes, routing,
auth, metrics and error mapping."""

from raylm.gateway.app import Gateway, create_gateway
from raylm.gateway.server import GatewayServer, run_gateway
from raylm.gateway.settings import GatewaySettings
from raylm.gateway.source import ReplicaSource, StaticReplicaSource

__all__ = [
    "Gateway",
    "GatewayServer",
    "GatewaySettings",
    "ReplicaSource",
    "StaticReplicaSource",
    "create_gateway",
    "run_gateway",
]
