"""The Flux controllers serve and apply this session's artifacts even when a port handed to them
was taken before they bound it.

The harness picks each controller port by binding port 0 and releasing it; until the controller
binds it, any server starting elsewhere on the machine (another xdist worker's operator, MAS
double, Synapse, control plane or Flux) can be handed the same port. source-controller binds its
artifact server and its metrics server only after its health probe answered; losing either
port, it exits, and every GitRepository of the session then waits for an artifact ("Source
artifact not found" in each Kustomization: issue 21, defect 7). Here an unrelated HTTP server
holds one of source-controller's ports; the controllers, started on their own shard so that the
session's controllers leave these objects alone, must still apply a commit, and nothing may ask
the unrelated server for an artifact.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.controlplane.cluster import ControlPlane, _free_port
from tests.controlplane.flux_build import FluxTools
from tests.gitops.failure_report import watch
from tests.gitops.flux import FLUX_API_VERSION, SHARD_LABEL, FluxApi, FluxControllers
from tests.gitops.git_server import BRANCH, GitServer

pytestmark = pytest.mark.integration

SHARD = "port-taken"
# The order in which FluxControllers asks for source-controller's ports (old and new harness).
SOURCE_PORTS = ("storage", "health", "metrics")


class _Unrelated(BaseHTTPRequestHandler):
    """Some other test's HTTP server: knows no artifact, answers 404 to everything."""

    server: _UnrelatedServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnrelatedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Unrelated)


@pytest.fixture
def unrelated_server() -> Iterator[_UnrelatedServer]:
    server = _UnrelatedServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _sharded(body: dict[str, object]) -> dict[str, object]:
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    metadata["labels"] = {SHARD_LABEL: SHARD}
    return body


@pytest.mark.parametrize("taken_port", ["storage", "metrics"])
def test_a_commit_is_applied_when_a_source_controller_port_was_taken(
    taken_port: str,
    control_plane: ControlPlane,
    flux_tools: FluxTools,
    namespace: str,
    tmp_path: Path,
    unrelated_server: _UnrelatedServer,
    request: pytest.FixtureRequest,
) -> None:
    handed: list[int] = []

    def free_port() -> int:
        taken = len(handed) == SOURCE_PORTS.index(taken_port)
        handed.append(unrelated_server.server_address[1] if taken else _free_port())
        return handed[-1]

    watched = watch(request.node)
    watched.api = api = FluxApi(control_plane, namespace)
    flux = FluxControllers(
        control_plane, flux_tools, tmp_path / "flux", free_port=free_port, shard=SHARD
    )
    watched.flux = flux
    with flux, GitServer(tmp_path / "git") as git:
        assert unrelated_server.server_address[1] in handed
        watched.git = git
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "from-git"},
            "data": {"shard": SHARD},
        }
        commit = git.commit({"app/configmap.yaml": yaml.safe_dump(configmap)}, "a ConfigMap")
        source_ref = {"kind": "GitRepository", "name": "repo"}
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump_all(
                [
                    _sharded(
                        {
                            "apiVersion": f"source.toolkit.fluxcd.io/{FLUX_API_VERSION}",
                            "kind": "GitRepository",
                            "metadata": {"name": "repo", "namespace": namespace},
                            "spec": {"url": git.url, "interval": "1m", "ref": {"branch": BRANCH}},
                        }
                    ),
                    _sharded(
                        {
                            "apiVersion": f"kustomize.toolkit.fluxcd.io/{FLUX_API_VERSION}",
                            "kind": "Kustomization",
                            "metadata": {"name": "app", "namespace": namespace},
                            "spec": {
                                "interval": "1m",
                                "path": "./app",
                                "prune": True,
                                "targetNamespace": namespace,
                                "sourceRef": source_ref,
                            },
                        }
                    ),
                ]
            ),
        )
        api.wait_kustomization("app", commit=commit, timeout=60)
        applied = control_plane.get(f"/api/v1/namespaces/{namespace}/configmaps/from-git")
        assert applied is not None
        assert applied["data"] == {"shard": SHARD}
    assert unrelated_server.paths == []
