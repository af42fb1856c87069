"""vLLM's engine arguments as raylm takes them (`--engine-arg KEY=VALUE`, `engine_args` in
raylm.toml, `raylm update --engine-arg`): one spelling (dashed), and the arguments raylm
owns refused with the raylm setting to use instead."""

from __future__ import annotations

from typing import Any

from raylm.errors import ConfigError

_SPAN = "raylm spans nodes itself when --tp x --pp is larger than one node"
# vLLM arguments raylm computes or depends on, with the raylm setting to use instead.
OWNED_ENGINE_ARGS: dict[str, str] = {
    "model": "the MODEL argument",
    "served-model-name": "--served-model-name",
    "host": "--host (the gateway's; raylm binds each replica to its node)",
    "port": "--port (the gateway's; raylm picks each replica's port)",
    "tensor-parallel-size": "--tp",
    "tp": "--tp",
    "pipeline-parallel-size": "--pp",
    "pp": "--pp",
    "dp": "--replicas",
    "distributed-executor-backend": 'executor = "ray" in the spec, or --executor ray',
    "nnodes": _SPAN,
    "node-rank": _SPAN,
    "master-addr": _SPAN,
    "master-port": _SPAN,
    "headless": _SPAN,
    "api-key": "--api-key (the gateway checks it)",
    "max-model-len": "--max-model-len (raylm plans with it)",
    "dtype": "--dtype (auto picks float32 on CPUs without bf16)",
}


def engine_arg_name(key: str) -> str:
    """vLLM argument `key` in its dashed spelling, without leading dashes."""
    return key.strip().lstrip("-").replace("_", "-")


def owned_engine_arg(key: str) -> str | None:
    """The raylm setting that replaces vLLM argument `key` (either spelling), or None."""
    k = engine_arg_name(key)
    if k.startswith("data-parallel-"):
        return "--replicas (raylm runs data parallelism as replicas behind its gateway)"
    return OWNED_ENGINE_ARGS.get(k)


def parse_engine_arg(item: str) -> tuple[str, Any]:
    """Parse one `--engine-arg KEY=VALUE` (a bare KEY means a true flag)."""
    key, sep, value = item.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(
            f"--engine-arg {item!r} has no key",
            fix="Write it as KEY=VALUE, e.g. --engine-arg max-num-seqs=8",
        )
    if not sep:
        return key, True
    return key, value
