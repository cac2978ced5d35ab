"""Git → Flux → Pod → Invitation → MAS → mail, with no operator process started by the test,
and the MAS client secret rotated in Git reaching the running Pod through the real kubelet.

A local Git repository holds this project's ``deploy/`` (the plain kustomize base), the two
Secrets it expects beside it (SOPS-encrypted with the guide's ``.sops.yaml``) and one Invitation.
The real kustomize-controller decrypts and applies the Secrets, applies ``deploy/`` through a
Kustomization with an image override (the image the suite built) and env patches (where MAS and
SMTP are), and the Invitation once the operator is Ready; the node's kubelet runs the Pod and
mounts the Secrets. The client secret committed first is wrong: the Invitation stalls. Committing
the right one heals it in the same process: Flux applies the Secret, the kubelet rewrites the
file (what tests/gitops/projector.py plays in the process-level GitOps tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.flux_build import ensure_flux
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.gitops.flux import FluxApi, FluxControllers
from tests.gitops.git_server import GitServer
from tests.gitops.repository import AgeKey, GitOpsRepository
from tests.integration.harness import InvitationsApi, condition
from tests.node.cluster_api import explained, pods, ready
from tests.node.conftest import (
    MAS_CLIENT_ID,
    MAS_CLIENT_SECRET,
    SMTP_PASSWORD,
    SMTP_USER,
    NodeCluster,
)
from tests.node.netns import NODE_IP
from tests.node.test_install import OLD_SECRET, RESTRICTED

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
# deploy/ says matrix-invite; the Kustomizations' targetNamespace moves it (and keeps it apart
# from test_install.py's namespaces on the same node).
NAMESPACE = "matrix-invite-flux"
DEPLOY_NAMESPACE = "matrix-invite"
FLUX_NAMESPACE = "flux-system"


@pytest.fixture
def flux_on_node(node_cluster: NodeCluster, tmp_path: Path) -> Iterator[FluxApi]:
    cp = node_cluster.control_plane
    with FluxControllers(cp, ensure_flux(), tmp_path / "flux"):
        cp.api("POST", "/api/v1/namespaces", {"metadata": {"name": FLUX_NAMESPACE}})
        yield FluxApi(cp, FLUX_NAMESPACE)


def operator_kustomization(image: str, mas: MasDouble, smtp: SmtpDouble) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    env = {
        "MATRIX_INVITE_MAS_URL": mas.url,
        "MATRIX_INVITE_MAS_TOKEN_ENDPOINT": f"{mas.url}/oauth2/token",
        "MATRIX_INVITE_MAS_CLIENT_ID": MAS_CLIENT_ID,
        "MATRIX_INVITE_SMTP_HOST": NODE_IP,
        "MATRIX_INVITE_SMTP_PORT": str(smtp.port),
        "MATRIX_INVITE_SMTP_TLS": "none",
        "MATRIX_INVITE_SMTP_ALLOW_INSECURE_AUTH": "true",
        "MATRIX_INVITE_SMTP_USERNAME": SMTP_USER,
        # Seconds, not minutes, between attempts (as test_install.py's values).
        "MATRIX_INVITE_SYNC_INTERVAL_SECONDS": "5",
        "MATRIX_INVITE_RETRY_BASE_SECONDS": "1",
        "MATRIX_INVITE_RETRY_MAX_SECONDS": "4",
    }
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        # Patches apply before targetNamespace: they name the base's own namespace.
        "metadata": {"name": "matrix-invite-operator", "namespace": DEPLOY_NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "operator",
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ]
                }
            }
        },
    }
    return kustomization(
        "matrix-invite-operator",
        "./deploy",
        targetNamespace=NAMESPACE,
        wait=True,
        timeout="3m",
        dependsOn=[{"name": "secrets"}],
        images=[{"name": "matrix-invite-operator", "newName": repository, "newTag": tag}],
        patches=[{"patch": yaml.safe_dump(patch)}],
    )


def kustomization(name: str, path: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": FLUX_NAMESPACE},
        "spec": {
            "interval": "5s",
            "path": path,
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "project"},
            **spec,
        },
    }


def test_flux_applies_deploy_and_the_pod_serves_an_invitation_committed_to_git(
    node_cluster: NodeCluster,
    node_mas: MasDouble,
    node_smtp: SmtpDouble,
    flux_on_node: FluxApi,
    tmp_path: Path,
) -> None:
    cp = node_cluster.control_plane
    tools = ensure_flux()
    key = AgeKey(tools.age_keygen, tmp_path / "age.agekey")
    cp.api("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE, "labels": RESTRICTED}})
    cp.kubectl(
        "-n", FLUX_NAMESPACE, "create", "secret", "generic", "sops-age",
        f"--from-file=age.agekey={key.path}",
    )  # fmt: skip
    mails_before = len(node_smtp.messages)
    decryption = {"provider": "sops", "secretRef": {"name": "sops-age"}}
    with GitServer(tmp_path / "git") as git:
        repo = GitOpsRepository(git, tools.sops, key)
        files: dict[str, str | None] = {
            f"deploy/{p.name}": p.read_text(encoding="utf-8") for p in DEPLOY.iterdir()
        }
        # deploy/kustomization.yaml: the Secrets beside it are the admin's, committed encrypted;
        # the MAS client secret starts out wrong.
        files[".sops.yaml"] = repo.sops_config()
        files.update(operator_secrets(OLD_SECRET))
        files[invitation_path] = invitation_text
        commit = repo.commit(files, "The operator's deploy/, its Secrets, one Invitation")
        assert OLD_SECRET not in git.show("matrix-invite/operator/matrix-invite-operator-mas.yaml")
        source = {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "project", "namespace": FLUX_NAMESPACE},
            "spec": {"interval": "5s", "url": git.url, "ref": {"branch": "main"}},
        }
        objects = [
            source,
            kustomization(
                "secrets", "./matrix-invite/operator", targetNamespace=NAMESPACE,
                decryption=decryption,
            ),
            operator_kustomization(node_cluster.image.name, node_mas, node_smtp),
            kustomization(
                "invitations", "./matrix-invite/invitations", targetNamespace=NAMESPACE,
                decryption=decryption, dependsOn=[{"name": "matrix-invite-operator"}],
            ),
        ]  # fmt: skip
        started = time.monotonic()
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        invitations = InvitationsApi(cp, NAMESPACE)
        with explained(cp, NAMESPACE):
            flux_on_node.wait_kustomization("matrix-invite-operator", commit=commit, timeout=240)
            [pod] = pods(cp, NAMESPACE)
            assert ready(pod)
            assert pod["spec"]["containers"][0]["image"] == node_cluster.image.name
            flux_on_node.wait_kustomization("invitations", commit=commit, timeout=60)
            failed = invitations.wait_for_phase("curie", "Failed", timeout=60)
            assert condition(failed, "Ready")["reason"] == "MasAuthFailed"  # type: ignore[index]

            # Rotated in Git: Flux decrypts and applies the Secret, the kubelet rewrites the
            # mounted file, the same process reads it.
            rotated = repo.commit(operator_secrets(MAS_CLIENT_SECRET), "Rotate the MAS secret")
            flux_on_node.reconcile_now("secrets")
            flux_on_node.wait_kustomization("secrets", commit=rotated, timeout=60)
            sent = invitations.wait_for_phase("curie", "Sent", timeout=90)
            [after] = pods(cp, NAMESPACE)
        print(f"\nGit commit to mail through Flux and the Pod: {time.monotonic() - started:.1f} s")
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    [token] = [t for t in node_mas.tokens() if t["id"] == sent["status"]["tokenId"]]
    mails = [m for m in node_smtp.messages[mails_before:] if m.rcpt_tos == ("curie@example.org",)]
    assert len(mails) == 1
    assert token["token"] in (mails[0].text or "")


def operator_secrets(client_secret: str) -> dict[str, str | None]:
    """The two Secrets deploy/ expects beside it (deploy/kustomization.yaml), a file each."""
    return {
        f"matrix-invite/operator/{name}.yaml": yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
             "stringData": {key: value}}
        )
        for name, key, value in (
            ("matrix-invite-operator-mas", "client-secret", client_secret),
            ("matrix-invite-operator-smtp", "password", SMTP_PASSWORD),
        )
    }  # fmt: skip


invitation_path = "matrix-invite/invitations/curie.yaml"
invitation_text = yaml.safe_dump(
    {
        "apiVersion": "matrix-invite.dev/v1alpha1",
        "kind": "Invitation",
        "metadata": {"name": "curie"},
        "spec": {"email": "curie@example.org", "usageLimit": 1, "validFor": "168h"},
    }
)
