"""pytest plugin: run the suite on several workers (pytest-xdist, `--dist loadgroup`) without
building any shared resource twice.

A session fixture (a vLLM server, a namespace cluster) or a module fixture must live in one
worker, so every test is given an `xdist_group`: its file, merged with every other file that
shares one of this suite's session fixtures. A group's tests run one after another on one
worker, and groups start in the collection's order.

That order puts groups together, the files the `raylm_start_first` ini option lists first
(in its order: the slowest, so the workers finish close together), then the rest as
collected. Without xdist the marks change nothing and the order still lets each session
resource be released after its group.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Session fixtures of pytest and its plugins: shared by nearly every test, and cheap, so they
# must not merge files into one group.
_BUILTIN_SESSION = {"tmp_path_factory", "worker_id", "testrun_uid", "monkeypatch_session"}


def _session_fixtures(item: pytest.Item) -> set[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return set()
    out = set()
    for name, defs in info.name2fixturedefs.items():
        if name not in _BUILTIN_SESSION and defs and defs[-1].scope == "session":
            out.add(name)
    return out


def file_groups(items: list[pytest.Item]) -> dict[Path, str]:
    """Each test file's group: files that share a session fixture are one group (union-find),
    named after its first file."""
    parent: dict[Path, Path] = {}

    def find(p: Path) -> Path:
        while parent.setdefault(p, p) != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    owner: dict[str, Path] = {}
    for item in items:
        find(item.path)
        for fixture in _session_fixtures(item):
            first = owner.setdefault(fixture, item.path)
            a, b = find(first), find(item.path)
            if a != b:
                parent[b] = a
    root = Path(items[0].config.rootpath) if items else Path()
    return {p: str(find(p).relative_to(root) if find(p).is_relative_to(root) else find(p))
            for p in parent}  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "raylm_start_first",
        type="linelist",
        default=[],
        help="Test files whose group starts first on parallel workers, slowest first.",
    )


def group_order(groups: dict[Path, str], items: list[pytest.Item], first: list[str]) -> list[str]:
    """The groups in the order they start: those of `first`'s files, then as collected."""
    root = Path(items[0].config.rootpath) if items else Path()
    order = [groups[root / f] for f in first if root / f in groups]
    order += [groups[i.path] for i in items]
    return list(dict.fromkeys(order))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # First: xdist's worker reads the marks in its own (plain) hook.
    groups = file_groups(items)
    rank = {
        g: n for n, g in enumerate(group_order(groups, items, config.getini("raylm_start_first")))
    }
    items.sort(key=lambda i: rank[groups[i.path]])  # stable: files and tests keep their order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.path]))
