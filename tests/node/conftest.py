"""Fixtures of the node tests, one of each per test session or xdist worker.

- ``operator_image``: the Dockerfile built with podman on the Debian base (tests/node/image.py).
"""

from __future__ import annotations

import pytest

from tests.node.image import OperatorImage, build_operator_image


@pytest.fixture(scope="session")
def operator_image() -> OperatorImage:
    return build_operator_image()
