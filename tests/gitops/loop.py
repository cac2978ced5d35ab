"""One GitOps loop as docs/install-flux.md sets it up, on the test control plane.

Owns the set-up both the GitOps tests and ``make demo-gitops`` use: the ``sops-age`` Secret, the
guide's ``.sops.yaml`` and the operator's encrypted Secrets committed, the guide's GitRepository
and both Kustomizations applied to one namespace (with :mod:`tests.gitops.repository`'s test
overrides), and the operator's Kustomization Ready; then commits that nudge Flux at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.controlplane.cluster import ControlPlane
from tests.gitops.flux import Body, FluxApi
from tests.gitops.git_server import GitServer
from tests.gitops.repository import AgeKey, GitOpsRepository, for_test, guide_documents

OPERATOR_KUSTOMIZATION = "matrix-invite-operator"
INVITATIONS_KUSTOMIZATION = "invitations"
KUSTOMIZATIONS = "kustomizations.kustomize.toolkit.fluxcd.io"


@dataclass
class GitOps:
    """One test's GitOps loop: commit to Git, ask Flux to reconcile now, read what it did."""

    cp: ControlPlane
    namespace: str
    repo: GitOpsRepository
    flux: FluxApi

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Commit (SOPS-encrypting what the guide's .sops.yaml covers) and nudge Flux, as
        ``flux reconcile kustomization --with-source`` would; return the commit id."""
        commit = self.repo.commit(files, message)
        self.flux.reconcile_now(OPERATOR_KUSTOMIZATION, INVITATIONS_KUSTOMIZATION)
        return commit

    def apply(self, document: dict[str, object]) -> None:
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(document))

    def invitations_kustomization(
        self, *, commit: str | None = None, ready: str = "True", timeout: float = 60.0
    ) -> Body:
        """Wait for the Invitations' Kustomization (see :meth:`FluxApi.wait_kustomization`)."""
        return self.flux.wait_kustomization(
            INVITATIONS_KUSTOMIZATION, commit=commit, ready=ready, timeout=timeout
        )


def guide_kustomizations(namespace: str) -> dict[str, dict[str, object]]:
    return {
        doc["metadata"]["name"]: for_test(doc, namespace)
        for doc in guide_documents("kustomizations.yaml")
    }


def open_loop(
    cp: ControlPlane,
    namespace: str,
    git: GitServer,
    sops: Path,
    key: AgeKey,
    credentials: tuple[str, str],
) -> GitOps:
    """Set up the guide's loop in ``namespace`` on a started ``git`` server; ``credentials`` are
    the MAS client secret and SMTP password committed (encrypted) to the operator's folder."""
    # What the guide's `kubectl create secret generic sops-age --from-file=...` does.
    cp.kubectl(
        "-n", namespace, "create", "secret", "generic", "sops-age",
        f"--from-file=age.agekey={key.path}",
    )  # fmt: skip
    repo = GitOpsRepository(git, sops, key)
    layout = repo.commit(
        {
            ".sops.yaml": repo.sops_config(),
            # Git keeps no empty folders, and Flux fails on a missing path.
            "matrix-invite/invitations/.keep": "",
            **dict([repo.operator_secrets(*credentials)]),
        },
        "The layout of docs/install-flux.md",
    )
    loop = GitOps(cp, namespace, repo, FluxApi(cp, namespace))
    (source,) = guide_documents("gitrepository.yaml")
    loop.apply(for_test(source, namespace, git_url=git.url))
    for kustomization in guide_documents("kustomizations.yaml"):
        loop.apply(for_test(kustomization, namespace))
    loop.flux.wait_kustomization(OPERATOR_KUSTOMIZATION, commit=layout, timeout=90)
    return loop


def close_loop(loop: GitOps) -> None:
    """Suspend both Kustomizations: deleted with their namespace, they then prune nothing (the
    operator is gone by then and could not release the Invitations' finalizers)."""
    for name in (OPERATOR_KUSTOMIZATION, INVITATIONS_KUSTOMIZATION):
        loop.cp.kubectl(
            "-n", loop.namespace, "patch", KUSTOMIZATIONS, name,
            "--type=merge", "-p", '{"spec":{"suspend":true}}', check=False,
        )  # fmt: skip
