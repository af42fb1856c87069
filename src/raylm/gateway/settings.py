"""How the gateway behaves: auth, limits, timeouts, retries, drain."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from raylm.gateway.keys import ClientKey, check_distinct, with_default
from raylm.gateway.limits import GatewayLimits
from raylm.gateway.policy import PolicyName


class GatewaySettings(BaseModel):
    """Settings of one gateway; every field has a safe default for local serving."""

    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = Field(
        default=None,
        description="When set, every route but /health needs `Authorization: Bearer <key>`.",
    )
    api_keys: list[ClientKey] = Field(
        default_factory=list,
        description="Named client keys, each with its own rate limits (raylm.gateway.keys); "
        "with `api_key` too, that one is the key named 'default', without limits.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Opens the admin routes (/admin/..., `raylm ps`, `raylm scale`); the "
        "clients' API keys never do. None: the admin routes are off.",
    )
    upstream_api_key: SecretStr | None = Field(
        default=None,
        description="Key the gateway presents to its replicas (raylm gives each deployment's "
        "replicas a private one); the client's own Authorization never goes upstream.",
    )
    limits: GatewayLimits = Field(
        default_factory=GatewayLimits,
        description="What one client may ask: request and connection limits (see limits.py).",
    )
    refresh_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=2.0,
        description="How often the replica table is refreshed from the source (at most 2 s: "
        "the controller counts a gateway silent for 5 s as gone, drains included).",
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Bound on one non-streaming upstream request."
    )
    connect_timeout_s: float = Field(
        default=3.0, gt=0, description="Bound on opening a connection to a replica."
    )
    stream_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A stream with no byte from its replica for this long ends with an "
        "error event.",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="How long stop() waits for in-flight requests."
    )
    retry_on_failure: bool = Field(
        default=True,
        description="Retry once on another ready replica when one fails before sending a byte.",
    )
    eject_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a replica that refused a connection is skipped by routing, "
        "unless the source reports a new generation of it sooner.",
    )
    engine_scrape_interval_s: float = Field(
        default=2.0,
        ge=0,
        description="How often each ready replica's engine metrics (KV-cache usage, running "
        "and waiting requests, prefix-cache hits) are read for /metrics and routing; 0: never.",
    )
    routing: PolicyName = Field(
        default="least-outstanding",
        description="The routing policy (raylm.gateway.policy): least-outstanding, "
        "round-robin, prefix-approximate or kv-aware. `raylm serve` passes its spec's "
        "(default kv-aware); a gateway built alone has no engine events nor model "
        "directories for kv-aware, so it routes by load unless told.",
    )
    model_dirs: dict[str, str] = Field(
        default_factory=dict,
        description="Per served model, its directory on this node: kv-aware routing "
        "tokenizes prompts with its tokenizer.",
    )
    kv_poll_interval_s: float = Field(
        default=0.25,
        gt=0,
        description="kv-aware routing: how often the replicas' cache changes are read.",
    )
    retry_after_s: int = Field(
        default=2, ge=1, description="Retry-After seconds sent with 503 answers."
    )

    @model_validator(mode="after")
    def _distinct_keys(self) -> GatewaySettings:
        check_distinct(self.client_keys())
        return self

    def client_keys(self) -> list[ClientKey]:
        """Every key a client may send: `api_key` (as 'default') and `api_keys`."""
        return with_default(self.api_key, self.api_keys)
