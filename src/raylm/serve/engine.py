"""How one rank of a replica runs vLLM: its command line and environment.

This is the one builder of the `vllm serve` line: the controller launches what it builds,
and `raylm plan` prints what it builds, so the two cannot disagree. raylm owns only what
it computes (parallel sizes, ports, node ranks, devices, network environment); the user's
engine arguments pass through to `vllm serve` untouched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.kv.endpoints import kv_events_config
from raylm.serve import replica_auth

CPU_KV_CACHE_BYTES = 1 << 30
# vLLM's switch for its engine's worker processes ("0": the worker runs in the engine).
UNIPROC_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""KV cache per CPU rank unless the user sizes it (~23k float32 tokens of the demo model)."""


class RankLaunch(BaseModel):
    """Everything needed to start one rank of one replica on its node."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="Model directory on the node (same path on every node).")
    served_model_name: str = Field(description="Name clients use in `model`.")
    host: str | None = Field(
        default=None,
        description="Address rank 0's OpenAI server binds to (the node's IP); None in a plan, "
        "where it is chosen at launch.",
    )
    port: int | None = Field(
        default=None, description="Port of rank 0's OpenAI server; None in a plan (a free port)."
    )
    tensor_parallel_size: int = Field(ge=1, description="TP of the replica.")
    pipeline_parallel_size: int = Field(ge=1, description="PP of the replica.")
    nnodes: int = Field(default=1, ge=1, description="Nodes the replica spans.")
    node_rank: int = Field(default=0, ge=0, description="This node's rank within the replica.")
    master_addr: str | None = Field(
        default=None, description="Rank 0's node IP when nnodes > 1 (None in a plan)."
    )
    master_port: int | None = Field(
        default=None, description="Rendezvous port when nnodes > 1 (None in a plan)."
    )
    dtype: str = Field(default="auto", description="dtype handed to vLLM.")
    max_model_len: int | None = Field(default=None, description="Context length, if set.")
    executor: str = Field(default="mp", description="vLLM distributed executor backend.")
    device: str = Field(default="cpu", description="'cpu' or 'cuda': what the node serves with.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="User's vLLM engine arguments, untouched."
    )
    kv_events: bool = Field(
        default=False,
        description="Rank 0 publishes its KV-cache events, with prefix caching on (for "
        "kv-aware routing; raylm.kv).",
    )
    kv_events_dir: str | None = Field(
        default=None,
        description="Private directory of rank 0's event sockets, chosen by its supervisor "
        "at launch; None in a plan.",
    )


def engine_arg_flags(engine_args: dict[str, Any]) -> list[str]:
    """Render `{key: value}` as vLLM CLI flags: True -> --key, False -> --no-key."""
    flags: list[str] = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            import json

            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def vllm_argv(launch: RankLaunch) -> list[str]:
    """The `vllm serve ...` arguments of this rank (without the interpreter and launcher).

    Fields a plan leaves open (host, port, master address and port) are left out.
    """
    argv = ["serve", launch.model_path, "--served-model-name", launch.served_model_name]
    if launch.host is not None:
        argv += ["--host", launch.host]
    if launch.port is not None:
        argv += ["--port", str(launch.port)]
    argv += [
        "--tensor-parallel-size",
        str(launch.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(launch.pipeline_parallel_size),
        "--dtype",
        launch.dtype,
    ]
    if launch.max_model_len:
        argv += ["--max-model-len", str(launch.max_model_len)]
    user = dict(launch.engine_args)
    # The replica key check (replica_auth) comes first; a user's own middleware follows it.
    theirs = user.pop("middleware", [])
    user["middleware"] = [replica_auth.PATH, *(theirs if isinstance(theirs, list) else [theirs])]
    if launch.device == "cpu":
        # Measured: CUDA-graph-free start is ~35 s instead of ~170 s; CPU has no graphs anyway.
        user.setdefault("enforce-eager", True)
        # vLLM's CPU default sizes the KV cache from a share of the whole node's memory
        # (4.7 GiB per rank at 0.2 of 24 GiB): too much where ranks share a host, and it
        # varies with what the kernel reports. A fixed size is predictable.
        keys = {k.replace("_", "-") for k in user}
        if not keys & {"gpu-memory-utilization", "kv-cache-memory-bytes"}:
            user["kv-cache-memory-bytes"] = CPU_KV_CACHE_BYTES
    if launch.kv_events and launch.node_rank == 0:
        user["enable-prefix-caching"] = True
        # The supervisor picks the directory at launch; a plan, printed for reading, has
        # none and shows no events config (vLLM's default endpoint is on every interface).
        if launch.kv_events_dir:
            user["kv-events-config"] = kv_events_config(Path(launch.kv_events_dir))
    if launch.nnodes > 1:
        argv += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank)]
        if launch.master_addr is not None:
            argv += ["--master-addr", launch.master_addr]
        if launch.master_port is not None:
            argv += ["--master-port", str(launch.master_port)]
        if launch.node_rank > 0:
            argv.append("--headless")
    elif launch.executor == "ray":
        # vLLM attaches to the cluster through RAY_ADDRESS (set from the supervisor's).
        argv += ["--distributed-executor-backend", "ray"]
    return argv + engine_arg_flags(user)


def command(launch: RankLaunch) -> list[str]:
    """The full child-process command line: this interpreter, raylm's launcher, vLLM's args."""
    missing = [f for f in ("host", "port") if getattr(launch, f) is None]
    if launch.nnodes > 1:
        missing += [f for f in ("master_addr", "master_port") if getattr(launch, f) is None]
    if missing:
        raise ValueError(f"a launch needs {', '.join(missing)}; a plan's launch cannot run")
    return [sys.executable, "-m", "raylm.serve.launcher", *vllm_argv(launch)]


def printable(launch: RankLaunch) -> list[str]:
    """The line as a person types it: `vllm serve ...`."""
    return ["vllm", *vllm_argv(launch)]


def parse_cores(spec: str) -> list[int]:
    """Parse a CPU list like "0,2-3" into [0, 2, 3] (empty or malformed: [])."""
    cores: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            lo, _, hi = part.partition("-")
            cores += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        return []
    return cores


def rank_env(
    launch: RankLaunch,
    *,
    node_ip: str,
    iface: str | None,
    cpu_cores: list[int] | None,
) -> dict[str, str]:
    """Environment a rank needs beyond its node's: network pinning and CPU binding."""
    env = {"VLLM_HOST_IP": node_ip, "PYTHONUNBUFFERED": "1"}
    if iface:
        env.setdefault("GLOO_SOCKET_IFNAME", iface)
        env.setdefault("NCCL_SOCKET_IFNAME", iface)
    if launch.device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        if cpu_cores:
            # One OpenMP thread group per local rank, e.g. "0|1" for TP=2 on 2 cores.
            local_ranks = max(1, launch.tensor_parallel_size // launch.nnodes)
            per = max(1, len(cpu_cores) // local_ranks)
            groups = [cpu_cores[i * per : (i + 1) * per] for i in range(local_ranks)]
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                ",".join(str(c) for c in g) for g in groups if g
            )
        if launch.tensor_parallel_size * launch.pipeline_parallel_size == 1:
            # One process fewer to start: the worker runs inside vLLM's engine process
            # (measured on 2 cores: ready in 44 s instead of 58 s). vLLM binds OpenMP
            # threads only in its multiprocess executor, so the launcher pins this
            # process to the bound cores itself (`pin_to_bound_cores`).
            env[UNIPROC_ENV] = "0"
    return env


def pin_to_bound_cores() -> list[int]:
    """In a one-process CPU engine, keep this process (and those it starts) on the cores
    VLLM_CPU_OMP_THREADS_BIND names; returns them ([] when nothing was pinned)."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")
    if os.environ.get(UNIPROC_ENV) != "0" or "|" in bind:
        return []
    cores = parse_cores(bind)
    if cores:
        os.sched_setaffinity(0, cores)
    return cores


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 (AVX-512 BF16 or AMX); bf16 is wrong text otherwise."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """Map `auto` to what is correct on this device (float32 on CPUs without bf16)."""
    if dtype != "auto":
        return dtype
    if device == "cpu" and not cpu_supports_bf16():
        return "float32"
    return "auto"
