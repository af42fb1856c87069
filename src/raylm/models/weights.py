"""Facts of a local model, with the exact bytes read from its safetensors headers.

`config.json` gives the shape (see `raylm.models.facts`); the safetensors headers give the
exact bytes and dtype of every tensor (the first 8 bytes of a `.safetensors` file are the
little-endian length of a JSON header listing each tensor's dtype, shape and byte range).
When no weight files are at hand, the bytes stay estimated from the config.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from raylm.errors import ModelError
from raylm.models.facts import ModelFacts, facts_from_config

# safetensors header dtype codes -> torch names.
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_EMBED_NAMES = ("embed_tokens.", "wte.", "word_embeddings.", "tok_embeddings.", "embeddings.word")
_LM_HEAD_NAMES = ("lm_head.", "embed_out.")
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file, checked against the file's size.

    Reads 8 + header-length bytes; never the tensor data.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise ModelError(
            f"Cannot read the safetensors header of {path}",
            model=str(path),
            why=str(e),
            fix="re-download or re-import the model; the file is damaged or not safetensors",
        ) from e
    if not isinstance(header, dict):
        raise ModelError(f"{path} has a malformed safetensors header", model=str(path))
    end = max(
        (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
    )
    if 8 + n + end > size:
        raise ModelError(
            f"{path} is truncated",
            model=str(path),
            why=f"its header describes {8 + n + end} bytes but the file has {size}",
            fix="the download or copy did not finish; fetch the model again",
        )
    return header


def _apply_headers(facts: ModelFacts, files: list[Path]) -> ModelFacts:
    total = embed = head = params = 0
    by_dtype: dict[str, int] = {}
    for f in files:
        for k, v in read_safetensors_header(f).items():
            if k == "__metadata__":
                continue
            nbytes = int(v["data_offsets"][1]) - int(v["data_offsets"][0])
            total += nbytes
            params += math.prod(v["shape"]) if v["dtype"] in _ST_BYTES else 0
            by_dtype[v["dtype"]] = by_dtype.get(v["dtype"], 0) + nbytes
            if any(s in k for s in _EMBED_NAMES):
                embed += nbytes
            elif any(s in k for s in _LM_HEAD_NAMES) or k == "output.weight":
                head += nbytes
    upd: dict[str, Any] = {
        "weight_bytes": total,
        "weight_bytes_exact": True,
        "embedding_bytes": embed or facts.embedding_bytes,
        "lm_head_bytes": head,
        "source": "safetensors",
    }
    if facts.quantization is None and by_dtype:
        # The headers say what the checkpoint really holds (the config may say otherwise).
        top = max(by_dtype, key=lambda d: by_dtype[d])
        upd["torch_dtype"] = _ST_DTYPES.get(top, facts.torch_dtype)
        upd["num_params"] = params
    return facts.model_copy(update=upd)


def _config_path(path: Path) -> Path:
    p = path.expanduser()
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ModelError(
            f"No config.json at {path}",
            model=str(path),
            why="the planner reads the model's shape from config.json",
            fix="give a Hugging Face-format model directory, a config.json file or a hub id",
        )
    return p


def read_model_facts(path_or_config: Path) -> ModelFacts:
    """Facts of a local model: a model directory or a config.json file.

    Weight bytes are exact when the directory has the safetensors files (or the index's
    `metadata.total_size` when only the index is present), estimated otherwise.
    """
    cfg_path = _config_path(Path(path_or_config))
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(
            f"Cannot parse {cfg_path}", model=str(cfg_path), why=str(e), fix="fix or re-fetch it"
        ) from e
    if not isinstance(config, dict):
        raise ModelError(f"{cfg_path} is not a JSON object", model=str(cfg_path))
    d = cfg_path.parent
    name = d.name if cfg_path.name == "config.json" else cfg_path.stem
    facts = facts_from_config(config, name=name, origin=str(d))
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            idx = json.loads(index.read_text())
            shards = sorted(set(idx["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"Cannot parse {index}", model=str(d), why=str(e)) from e
        if all((d / s).is_file() for s in shards):
            return _apply_headers(facts, [d / s for s in shards])
        total = (idx.get("metadata") or {}).get("total_size")
        if total:
            return facts.model_copy(
                update={
                    "weight_bytes": int(total),
                    "weight_bytes_exact": True,
                    "source": "safetensors-index",
                }
            )
        return facts
    files = sorted(d.glob("*.safetensors"))
    if files:
        return _apply_headers(facts, files)
    if any(d.glob("*.bin")) or any(d.glob("*.pt")):
        facts.notes.append("weights are not safetensors; bytes estimated from the config")
    return facts
