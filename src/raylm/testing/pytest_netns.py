"""pytest plugin: a session-wide 3-node Ray cluster built from network namespaces, and
session resources released after their last user.

Load it with `pytest_plugins = ["raylm.testing.pytest_netns"]`. Tests that use
`netns_cluster` skip with the reason when the machine cannot build namespaces (not root,
no iproute2). They run first, together, and the cluster is torn down after the last of them
(and at the end of the session in any case, even when tests fail); the teardown checks that
nothing is left behind.

Why release early: an idle 3-node cluster costs about a third of a core (Ray's log monitors
and agents, measured), which the rest of the suite, on 2 cores, needs for loading vLLM.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from raylm.testing.netns import NetnsCluster
from raylm.testing.network import netns_unavailable_reason

NETNS_SUBNET_ENV = "RAYLM_TEST_SUBNET"

_release: dict[str, Callable[[], None]] = {}


def release_after_last_use(fixture: str, close: Callable[[], None]) -> None:
    """Call `close` once the last selected test that uses `fixture` is torn down. `close`
    must be idempotent: the fixture's own teardown still runs at the end of the session."""
    _release[fixture] = close


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The files that use the shared cluster first: whole files (their module fixtures are
    # set up once), in their usual order, as is every file's own order (the sort is stable).
    users = {i.path for i in items if "netns_cluster" in getattr(i, "fixturenames", ())}
    items.sort(key=lambda item: item.path not in users)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    used = [f for f in _release if f in getattr(item, "fixturenames", ())]
    if not used:
        return
    # Also right on an xdist worker: every user of a session fixture is in one group
    # (raylm.testing.pytest_groups), which one worker runs in this order.
    later = item.session.items[item.session.items.index(item) + 1 :]
    for fixture in used:
        if not any(fixture in getattr(it, "fixturenames", ()) for it in later):
            _release.pop(fixture)()


def require_netns() -> None:
    """Skip the calling test when network namespaces cannot be built here."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"multi-node harness unavailable: {reason}")


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """Three machines (network namespaces with their own network, HOME and TMPDIR) made a
    cluster as the README says: `raylm up` on node 0, then the join line it printed on
    nodes 1 and 2. Subnet 10.77.0/24; `RAYLM_TEST_SUBNET` picks another /24 (e.g. when two
    suites run at once).
    """
    require_netns()
    subnet = os.environ.get(NETNS_SUBNET_ENV, "10.77.0")
    cluster = NetnsCluster(3, subnet=subnet, workdir=tmp_path_factory.mktemp("netns"))
    try:
        cluster.start()
        release_after_last_use("netns_cluster", cluster.close)
        yield cluster
    finally:
        cluster.close()
    left = cluster.leftovers()
    assert not left, f"netns cluster left things behind: {left}"
