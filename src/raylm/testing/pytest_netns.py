"""pytest plugin: a session-wide 3-node Ray cluster built from network namespaces.

Load it with `pytest_plugins = ["raylm.testing.pytest_netns"]`. Tests that use
`netns_cluster` skip with the reason when the machine cannot build namespaces (not root,
no iproute2). The cluster is torn down at the end of the session even when tests fail,
and the teardown checks that nothing is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from raylm.testing.netns import NetnsCluster, netns_unavailable_reason

NETNS_SUBNET_ENV = "RAYLM_TEST_SUBNET"


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
        yield cluster
    finally:
        cluster.close()
    left = cluster.leftovers()
    assert not left, f"netns cluster left things behind: {left}"
