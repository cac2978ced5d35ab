"""Makes the control-plane fixtures available when only this directory's tests are collected.

The top-level conftest normally registers ``tests.controlplane.fixtures`` via ``pytest_plugins``;
registering it a second time from here would create a second session control plane, so this only
fills the gap when it is absent.
"""

from __future__ import annotations

import pytest

PLUGIN = "tests.controlplane.fixtures"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
