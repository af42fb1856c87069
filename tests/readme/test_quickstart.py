"""The README's Quickstart, typed verbatim on a fresh machine (a network namespace with its
own HOME and TMPDIR, no cluster, no raylm state): `make serve`, then its curl line, then
Ctrl+C. And the install it documents is exactly what `make` runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylm.testing.netns import NetnsCluster
from raylm.testing.pytest_netns import require_netns
from tests.readme.readme_doc import MAKEFILE, README, blocks, section

pytestmark = pytest.mark.multinode


def test_the_documented_install_is_what_make_runs() -> None:
    quick = section("Quickstart")
    install = [b for b in blocks(quick, "bash") if any("pip install" in ln for ln in b)]
    assert install, "the Quickstart documents no pip install"
    documented = [ln.split("#")[0].strip() for ln in install[0] if "pip install" in ln]
    recipe = MAKEFILE.read_text().split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    ran = [ln.strip().replace("$(BIN)/python -m ", "") for ln in recipe.splitlines()]
    for line in documented:
        assert line in ran, f"README documents `{line}`, the Makefile runs {ran}"
    assert not any("uninstall" in ln for ln in ran), "make must install exactly as documented"


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    require_netns()
    c = NetnsCluster(1, subnet="10.77.7", workdir=tmp_path_factory.mktemp("quickstart"))
    try:
        c.build()
        yield c
    finally:
        c.close()


def test_quickstart_serves_the_demo_and_ctrl_c_leaves_nothing(
    machine: NetnsCluster, tmp_path: Path
) -> None:
    quick = section("Quickstart")
    commands, curl, *_ = blocks(quick, "bash")
    lines = [ln.strip() for ln in commands if ln.strip()]
    assert [ln.split()[:2] for ln in lines] == [["make", "serve"], ["make", "test"]]
    # `make test` is this suite itself; `make serve` runs as typed, in the checkout.
    log_path = tmp_path / "make-serve.log"
    with open(log_path, "wb") as log:
        proc = machine.popen(
            0,
            ["bash", "-c", lines[0]],
            cwd=str(README.parent),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 900
        while "raylm is ready" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(2)
        answer = machine.run(0, ["bash", "-c", "\n".join(curl)], timeout=120)
        assert answer.returncode == 0, answer.stderr
        assert "Paris" in answer.stdout, answer.stdout
    finally:
        # Ctrl+C: the terminal sends SIGINT to the whole foreground process group.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=180)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    # The shell ends by SIGINT itself (-2) once make (2) has reported raylm's clean exit.
    assert rc in (0, 2, 130, -signal.SIGINT), text[-3000:]
    assert "raylm stopping Ray" in text, text[-3000:]
    deadline = time.monotonic() + 60
    while machine.ns_pids(0) and time.monotonic() < deadline:
        time.sleep(1)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in machine.ns_pids(0)}
    assert left == {}, f"Ctrl+C left processes behind: {left}"
