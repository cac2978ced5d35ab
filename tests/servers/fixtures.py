"""Pytest fixtures for tests that need a real Synapse (registered in `tests/conftest.py`).

- ``synapse_server`` (session): one started :class:`~tests.servers.synapse.SynapseServer`; its
  start-up (about 5 s: the homeserver itself, then the admin user) is paid once per run.
- ``synapse`` (function): the same server with no registration tokens left over from earlier
  tests, so a test may count Synapse's tokens. Users registered by earlier tests remain; every
  registration picks a fresh random user name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.synapse import SynapseServer


@pytest.fixture(scope="session")
def synapse_server() -> Iterator[SynapseServer]:
    with SynapseServer() as server:
        yield server


@pytest.fixture
def synapse(synapse_server: SynapseServer) -> SynapseServer:
    synapse_server.delete_all_tokens()
    return synapse_server
