"""pytest plugin: run the suite on several workers (pytest-xdist, `--dist loadgroup`) without
building any shared resource twice.

A session fixture (a vLLM server, a namespace cluster) or a module fixture must live in one
worker, so tests are scheduled in groups: a test file, merged with every other file that
shares one of this suite's session fixtures. A group's tests run one after another on one
worker, and groups start in the collection's order. That order puts each group's files
together, the files the `raylm_start_first` ini option lists first (in its order: the
slowest, so the workers finish close together), then the rest as collected. Without xdist
the order still lets each session resource be released right after its group.

The groups are this plugin's own scheduler, not `xdist_group` marks: xdist 3.8 applies
those by rewriting a private node-id attribute that pytest 9.2 no longer reads. Workers
compute the file -> group table at collection (they see the fixtures) and write it to a
file the controller's scheduler reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Session fixtures of pytest and its plugins: shared by nearly every test, and cheap, so they
# must not merge files into one group.
_BUILTIN_SESSION = {"tmp_path_factory", "worker_id", "testrun_uid", "monkeypatch_session"}
_TABLE_KEY = "raylm_groups_file"
_table_path = pytest.StashKey[str]()


def _session_fixtures(item: pytest.Item) -> set[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return set()
    return {
        name
        for name, defs in info.name2fixturedefs.items()
        if name not in _BUILTIN_SESSION and defs and defs[-1].scope == "session"
    }


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def file_groups(items: list[pytest.Item], root: Path) -> dict[str, str]:
    """Each test file's group (paths relative to `root`): files that share a session fixture
    are one group (union-find), named after its first file."""
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        while parent.setdefault(p, p) != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    owner: dict[str, str] = {}
    for item in items:
        path = _rel(item.path, root)
        find(path)
        for fixture in _session_fixtures(item):
            a, b = find(owner.setdefault(fixture, path)), find(path)
            if a != b:
                parent[b] = a
    return {p: find(p) for p in parent}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "raylm_start_first",
        type="linelist",
        default=[],
        help="Test files whose group starts first on parallel workers, slowest first.",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(config.rootpath)
    groups = file_groups(items, root)
    first = [groups[f] for f in config.getini("raylm_start_first") if f in groups]
    order = list(dict.fromkeys([*first, *(groups[_rel(i.path, root)] for i in items)]))
    rank = {g: n for n, g in enumerate(order)}
    items.sort(key=lambda i: rank[groups[_rel(i.path, root)]])  # stable: files keep their order
    table = getattr(config, "workerinput", {}).get(_TABLE_KEY)
    if table:  # every worker collects the same tests: any one's table will do
        tmp = f"{table}.{os.getpid()}"
        Path(tmp).write_text(json.dumps(groups))
        os.replace(tmp, table)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and config.pluginmanager.hasplugin("xdist"):
        fd, path = tempfile.mkstemp(prefix="raylm-test-groups-", suffix=".json")
        os.close(fd)
        os.unlink(path)  # written by a worker at collection
        config.stash[_table_path] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_table_path, None)
    if path:
        Path(path).unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    path = node.config.stash.get(_table_path, None)
    if path:
        node.workerinput[_TABLE_KEY] = path


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    table_path = config.stash[_table_path]

    class FileGroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """xdist's scope scheduling, with this suite's file groups as the scopes."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # read once, after every worker finished collecting
                self._groups = json.loads(Path(table_path).read_text())
            path = nodeid.split("::", 1)[0]
            return self._groups.get(path, path)

    return FileGroupScheduling(config, log)
