"""Fixtures of the node tests, one of each per test session or xdist worker.

- ``operator_image``: the Dockerfile built with podman on the Debian base (tests/node/image.py).
- ``node_cluster``: a namespace of our own holding a control plane and a real node
  (tests/node/node.py), with the operator's image loaded into the node's containerd.
- ``node_mas`` / ``node_smtp``: the MAS and SMTP doubles listening on the node's address inside
  that namespace, where Pods reach them and nothing outside can.

Everything is started once, bounded in time, and stopped by PID at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.controlplane.build import ensure_binaries
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.node.build import ensure_node_binaries
from tests.node.image import OperatorImage, build_operator_image
from tests.node.netns import NODE_IP, NetworkNamespace
from tests.node.node import Node, NodeControlPlane

# The docs' values (docs/examples/flux/release.yaml): the client ULID and the SMTP login.
MAS_CLIENT_ID = "01J44RKQYM4G3TNVANTMTDYTX6"
MAS_CLIENT_SECRET = "node-test-mas-client-secret"
SMTP_USER = "invitations@example.org"
SMTP_PASSWORD = "node-test-smtp-password"


@dataclass(frozen=True)
class NodeCluster:
    namespace: NetworkNamespace
    control_plane: NodeControlPlane
    node: Node
    image: OperatorImage


@pytest.fixture(scope="session")
def operator_image() -> OperatorImage:
    return build_operator_image()


@pytest.fixture(scope="session")
def node_cluster(operator_image: OperatorImage) -> Iterator[NodeCluster]:
    binaries, node_binaries = ensure_binaries(), ensure_node_binaries()
    with NetworkNamespace() as namespace:
        cp = NodeControlPlane(namespace, binaries=binaries)
        with cp:
            node = Node(cp, binaries=node_binaries)
            try:
                node.start()
                node.load_image(operator_image.archive)
                yield NodeCluster(namespace, cp, node, operator_image)
            finally:
                node.stop()


@pytest.fixture(scope="session")
def node_mas(node_cluster: NodeCluster) -> Iterator[MasDouble]:
    double = MasDouble(NODE_IP, client_id=MAS_CLIENT_ID, client_secret=MAS_CLIENT_SECRET)
    node_cluster.namespace.call(double.start)
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture(scope="session")
def node_smtp(node_cluster: NodeCluster) -> Iterator[SmtpDouble]:
    # Plain SMTP with AUTH: the double's certificates name only 127.0.0.1 (tests/doubles/smtp.py).
    double = SmtpDouble(mode="plain", username=SMTP_USER, password=SMTP_PASSWORD, host=NODE_IP)
    node_cluster.namespace.call(double.start)
    try:
        yield double
    finally:
        double.stop()
