"""Fixtures shared by all test layers: the control plane (tests.controlplane) and a real Synapse
(tests.servers)."""

from __future__ import annotations

pytest_plugins = ["tests.controlplane.fixtures", "tests.servers.fixtures"]
