"""One GitOps loop as docs/install-flux.md sets it up, on the test control plane.

Owns the set-up both the GitOps tests and ``make demo-gitops`` use: the ``sops-age`` Secret, the
guide's ``.sops.yaml``, ESS's Secret of docs/install-ess.md and the operator's SMTP Secret
committed encrypted, the guide's GitRepository and both Kustomizations applied to one namespace
(with :mod:`tests.gitops.repository`'s test overrides) beside a stand-in for the admin's own ESS
Kustomization, and the operator's Kustomization Ready; then commits that nudge Flux at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.controlplane.cluster import ApiError, ControlPlane
from tests.gitops.flux import KUSTOMIZATIONS, Body, FluxApi
from tests.gitops.git_server import GitServer
from tests.gitops.repository import ESS_DIR, AgeKey, GitOpsRepository, for_test, guide_documents

OPERATOR_KUSTOMIZATION = "matrix-invite-operator"
INVITATIONS_KUSTOMIZATION = "invitations"


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
        self.flux.reconcile_now(
            ess_kustomization_name(), OPERATOR_KUSTOMIZATION, INVITATIONS_KUSTOMIZATION
        )
        return commit

    def apply(self, *documents: dict[str, object]) -> None:
        """``kubectl apply`` of the documents, as an admin would (one process for all)."""
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))

    def invitations_kustomization(
        self, *, commit: str | None = None, ready: str = "True", timeout: float = 60.0
    ) -> Body:
        """Wait for the Invitations' Kustomization (see :meth:`FluxApi.wait_kustomization`)."""
        return self.flux.wait_kustomization(
            INVITATIONS_KUSTOMIZATION, commit=commit, ready=ready, timeout=timeout
        )


def _operator_kustomization() -> Body:
    (operator,) = [
        d for d in guide_documents("kustomizations.yaml")
        if d["metadata"]["name"] == OPERATOR_KUSTOMIZATION
    ]  # fmt: skip
    return operator


def ess_kustomization_name() -> str:
    """The Kustomization the guide's operator Kustomization ``dependsOn``: the admin's ESS one."""
    (dependency,) = _operator_kustomization()["spec"]["dependsOn"]
    name: str = dependency["name"]
    return name


def ess_kustomization(namespace: str) -> Body:
    """A stand-in for the admin's own Kustomization of ESS's folder (not an object of the guide):
    only what the guide relies on, that it applies ``ess/`` with SOPS decryption."""
    operator = _operator_kustomization()
    body: Body = {
        "apiVersion": operator["apiVersion"],
        "kind": "Kustomization",
        "metadata": {"name": ess_kustomization_name(), "namespace": "flux-system"},
        "spec": {
            "interval": "30m",
            "path": f"./{ESS_DIR}",
            "prune": True,
            "timeout": "5m",
            "sourceRef": operator["spec"]["sourceRef"],
            "decryption": operator["spec"]["decryption"],
        },
    }
    return for_test(body, namespace)


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
    the MAS client secret (committed encrypted in ESS's Secret, the only place the guides keep
    it) and the SMTP password (in the operator's folder)."""
    # What the guide's `kubectl create secret generic sops-age --from-file=...` does.
    cp.kubectl(
        "-n", namespace, "create", "secret", "generic", "sops-age",
        f"--from-file=age.agekey={key.path}",
    )  # fmt: skip
    client_secret, smtp_password = credentials
    repo = GitOpsRepository(git, sops, key)
    layout = repo.commit(
        {
            ".sops.yaml": repo.sops_config(),
            # Git keeps no empty folders, and Flux fails on a missing path.
            "matrix-invite/invitations/.keep": "",
            **dict([repo.ess_secret(client_secret), repo.operator_secrets(smtp_password)]),
        },
        "The layout of docs/install-flux.md",
    )
    loop = GitOps(cp, namespace, repo, FluxApi(cp, namespace))
    (source,) = guide_documents("gitrepository.yaml")
    loop.apply(
        for_test(source, namespace, git_url=git.url),
        ess_kustomization(namespace),
        *(for_test(k, namespace) for k in guide_documents("kustomizations.yaml")),
    )
    loop.flux.wait_kustomization(OPERATOR_KUSTOMIZATION, commit=layout, timeout=90)
    return loop


def close_loop(loop: GitOps) -> None:
    """Suspend both Kustomizations: deleted with their namespace, they then prune nothing (the
    operator is gone by then and could not release the Invitations' finalizers)."""
    for name in (ess_kustomization_name(), OPERATOR_KUSTOMIZATION, INVITATIONS_KUSTOMIZATION):
        with contextlib.suppress(ApiError):  # a test may have failed before it existed
            loop.flux.patch(KUSTOMIZATIONS, name, {"spec": {"suspend": True}})
