"""Fixtures shared by all test layers; the control-plane fixtures come from tests.controlplane."""

from __future__ import annotations

pytest_plugins = ["tests.controlplane.fixtures"]
