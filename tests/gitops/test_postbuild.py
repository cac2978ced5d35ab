"""Flux's post-build substitution meets ``${...}`` in an Invitation.

Admins often turn on ``spec.postBuild`` for a whole folder to fill in a cluster's domain. Then
every ``${NAME}`` in every manifest of that Kustomization is substituted, Invitations included:
a defined variable silently changes the text (here a display name), and an undefined one fails
the whole Kustomization (strict substitution, the default since kustomize-controller v1.9.0). The
fix the guide gives: the annotation ``kustomize.toolkit.fluxcd.io/substitute: disabled`` on the
object (``docs/examples/flux/substitute-disabled.yaml``, committed here as the guide shows it).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.gitops.loop import INVITATIONS_KUSTOMIZATION, GitOps
from tests.gitops.repository import EXAMPLES, INVITATIONS_DIR, guide_documents
from tests.integration.harness import InvitationsApi, condition
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

SUBSTITUTE = {"domain": "example.org"}


def test_dollar_braces_in_an_invitation_under_post_build_substitution(
    gitops: GitOps,
    invitations: InvitationsApi,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    gitops.cp.kubectl(
        "-n", gitops.namespace, "patch", "kustomizations.kustomize.toolkit.fluxcd.io",
        INVITATIONS_KUSTOMIZATION, "--type=merge",
        "-p", json.dumps({"spec": {"postBuild": {"substitute": SUBSTITUTE}}}),
    )  # fmt: skip

    # A defined variable: applied, but not as written.
    path, manifest = gitops.repo.invitation(
        "team", email="team@example.org", displayName="Team ${domain}"
    )
    replaced = gitops.commit({path: manifest}, "Invite the team")
    gitops.invitations_kustomization(commit=replaced, timeout=60)
    assert invitations.get("team")["spec"]["displayName"] == "Team example.org"  # type: ignore[index]

    # An undefined one: the whole Kustomization fails, naming the variable.
    (grace,) = guide_documents("substitute-disabled.yaml")
    unprotected = {**grace, "metadata": {"name": grace["metadata"]["name"]}}
    grace_path = f"{INVITATIONS_DIR}/grace.yaml"
    failing_at = gitops.commit({grace_path: json.dumps(unprotected)}, "Invite Grace")
    failing = gitops.invitations_kustomization(commit=failing_at, ready="False", timeout=60)
    message = condition(failing, "Ready")["message"]  # type: ignore[index]
    assert "Hopper" in message
    assert invitations.get("grace") is None

    # The guide's fix, committed as the guide shows it.
    fixed_at = gitops.commit(
        {grace_path: (EXAMPLES / "substitute-disabled.yaml").read_text()}, "Grace, verbatim"
    )
    gitops.invitations_kustomization(commit=fixed_at, timeout=60)
    applied = invitations.get("grace")
    assert applied is not None
    assert applied["spec"]["displayName"] == "Grace ${Hopper}"
    invitations.wait_for_phase("grace", "Sent")
