"""The endpoint a benchmark runs against: its base URL, the model it serves and a local
tokenizer for that model (vLLM's benchmark builds its prompts with one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import RaylmError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class Target(BaseModel):
    """One endpoint under test."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="How results name it: 'A' or 'B' in a comparison, else ''.")
    url: str = Field(description="Its base URL, without /v1 (http://host:port).")
    model: str = Field(description="The model name requests carry (one /v1/models lists).")
    tokenizer: str = Field(description="A local directory holding the model's tokenizer.")


def resolve(
    url: str, api_key: str | None, model: str | None, tokenizer: str | None, label: str = ""
) -> Target:
    """Ask `url`'s /v1/models which model to use (`model`, or the first it lists) and find
    its tokenizer (`tokenizer`, or the model's `root` when that is a local directory)."""
    base = url.rstrip("/").removesuffix("/v1")
    listed = _models(base, api_key)
    names = [str(m.get("id")) for m in listed]
    if model is None:
        entry = listed[0]
    else:
        found = [m for m in listed if m.get("id") == model]
        if not found:
            raise RaylmError(
                f"{base} does not serve `{model}`",
                why=f"its /v1/models lists {', '.join(names)}",
                fix="pass one of those to --model",
            )
        entry = found[0]
    name = str(entry["id"])
    return Target(label=label, url=base, model=name, tokenizer=_tokenizer(name, entry, tokenizer))


def _models(base: str, api_key: str | None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{base}/v1/models", headers=headers, timeout=10.0)
    except httpx.HTTPError as e:
        raise RaylmError(
            f"Cannot reach {base}",
            why=f"{type(e).__name__}: {e}",
            fix="check the URL and that the server runs",
            command=f"curl {base}/v1/models",
        ) from e
    if r.status_code == 401:
        raise RaylmError(
            f"{base} refused the benchmark's key (401)",
            why="it needs an API key" if not api_key else "the key is not one of its keys",
            fix="pass --api-key KEY, or set RAYLM_API_KEY",
        )
    try:
        r.raise_for_status()
        data = r.json()["data"]
    except (httpx.HTTPStatusError, ValueError, KeyError, TypeError) as e:
        raise RaylmError(
            f"{base}/v1/models did not answer as an OpenAI-compatible server",
            why=f"status {r.status_code}: {r.text[:200]}",
            fix="point --endpoint at the server's base URL (without /v1)",
        ) from e
    if not data:
        raise RaylmError(
            f"{base} serves no model yet",
            why="its /v1/models list is empty (no replica is ready)",
            fix="wait until it is ready",
            command=f"curl {base}/health",
        )
    return [m for m in data if isinstance(m, dict) and "id" in m]


def _tokenizer(name: str, entry: dict[str, Any], given: str | None) -> str:
    """`given`, or the model's `root` (vLLM and raylm list the model's directory there)."""
    candidates = [given] if given else [entry.get("root")]
    for c in candidates:
        if isinstance(c, str) and Path(c).is_dir():
            if any((Path(c) / f).exists() for f in _TOKENIZER_FILES):
                return c
            if given:
                raise RaylmError(
                    f"{given} holds no tokenizer",
                    why=f"none of {', '.join(_TOKENIZER_FILES)} is there",
                    fix="pass the directory of the model's files to --tokenizer",
                )
    if given:
        raise RaylmError(f"--tokenizer {given} is not a directory", fix="pass a local directory")
    raise RaylmError(
        f"No local tokenizer for `{name}`",
        why="the benchmark builds its prompts with the model's tokenizer, and the server's "
        "model directory is not on this machine (there is no model hub to fetch it from)",
        fix="pass --tokenizer DIR (a directory with the model's tokenizer files)",
        command="raylm model list",
    )
