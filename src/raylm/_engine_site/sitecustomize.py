"""Runs first in every Python process of a vLLM engine that raylm launched (it is on their
PYTHONPATH): hides the torch extensions the launcher found broken, as `raylm.compat`
explains, then runs the `sitecustomize` this one shadows, if any. No imports of torch here:
the launcher already decided, and passes its decision in RAYLM_HIDDEN_MODULES."""

import importlib
import os
import sys

for _name in filter(None, os.environ.get("RAYLM_HIDDEN_MODULES", "").split(",")):
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]

_here = os.path.dirname(os.path.abspath(__file__))
_saved = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_me = sys.modules.pop("sitecustomize", None)
try:
    importlib.import_module("sitecustomize")
except ImportError:
    pass
finally:
    sys.path[:] = _saved
    if _me is not None:
        sys.modules["sitecustomize"] = _me
