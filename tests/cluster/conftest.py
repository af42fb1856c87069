"""Loads the netns harness plugin unless tests/conftest.py already did."""

from __future__ import annotations

import pytest

PLUGIN = "raylm.testing.pytest_netns"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
