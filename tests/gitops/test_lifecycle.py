"""An Invitation's life in Git, carried out by the real Flux controllers.

Commit → source-controller fetches it over smart HTTP → kustomize-controller decrypts it (the
guide's .sops.yaml encrypts the address and name), applies it by server-side apply and waits on
the guide's ``healthCheckExprs`` → the operator issues the token and sends the mail. An edit in
Git changes the token in place; removing the file makes Flux prune the Invitation, and the
operator's finalizer revokes the token. Every step checks the Kustomization's own status (Ready,
``lastAppliedRevision`` equal to the commit) and the operator's effects (MAS double, mail sink,
token Secret).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import yaml

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.gitops.flux import ready_condition, revision
from tests.gitops.loop import GitOps
from tests.gitops.repository import EXAMPLES, INVITATIONS_DIR
from tests.integration.harness import Body, InvitationsApi, condition, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

ADA = {
    "email": "ada@example.org",
    "displayName": "Ada Lovelace",
    "usageLimit": 1,
    "validFor": "168h",
}


def ready_status(body: Body | None) -> str | None:
    found = condition(body or {}, "Ready")
    return None if found is None else str(found["status"])


def test_committed_invitation_is_applied_sent_and_waited_for(
    gitops: GitOps,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    # A slow MAS keeps the Invitation un-Ready for a while: long enough to see Flux wait on it.
    mas.delay(4)
    # The guide's own example, as an admin would commit it.
    path, manifest = f"{INVITATIONS_DIR}/ada.yaml", (EXAMPLES / "ada.yaml").read_text()
    assert yaml.safe_load(manifest)["spec"] == {**ADA, "locale": "en"}
    commit = gitops.commit({path: manifest}, "Invite Ada")
    assert "ENC[AES256_GCM" in gitops.repo.git.show(path)
    assert "ada@example.org" not in gitops.repo.git.show(path)

    seen_waiting = False
    deadline = time.monotonic() + 90
    while True:
        kustomization = gitops.flux.kustomization("invitations")
        status = kustomization.get("status") or {}
        applied = status.get("lastAppliedRevision") == revision(commit)
        ready = ready_status(kustomization) == "True"
        invitation = invitations.get("ada")
        if applied and ready:
            # Flux calls the commit applied only after its health check passed.
            assert ready_status(invitation) == "True"
            break
        if (
            status.get("lastAttemptedRevision") == revision(commit)
            and invitation is not None
            and ready_status(invitation) != "True"
        ):
            seen_waiting = True
        assert time.monotonic() < deadline, f"not applied in time: {status}"
        time.sleep(0.3)
    assert seen_waiting, (
        "Flux never showed the commit in progress while the Invitation was not Ready"
    )
    assert "Applied revision" in condition(kustomization, "Ready")["message"]  # type: ignore[index]
    entries = [e["id"] for e in kustomization["status"]["inventory"]["entries"]]
    assert entries == [f"{gitops.namespace}_ada_matrix-invite.dev_Invitation"]

    sent = invitations.wait_for_phase("ada", "Sent")
    # Decrypted by kustomize-controller: the cluster sees the address and no SOPS metadata.
    assert sent["spec"]["email"] == "ada@example.org"
    assert "sops" not in sent
    fields = invitations.kubectl("get", "invitation", "ada", "-o", "json", "--show-managed-fields")
    managed = json.loads(fields)["metadata"]["managedFields"]
    managers = {(m["manager"], m["operation"]) for m in managed}
    assert ("kustomize-controller", "Apply") in managers
    (token,) = mas.tokens()
    assert token["id"] == sent["status"]["tokenId"]
    assert invitations.secret_token(sent["status"]["secretName"]) == token["token"]
    (mail,) = smtp.wait_for_sync(1, timeout=10)
    assert mail.rcpt_tos[0] == "ada@example.org"


def test_edits_in_git_change_the_token_without_a_second_mail(
    gitops: GitOps,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    path, manifest = gitops.repo.invitation("ada", **ADA)
    gitops.invitations_kustomization(commit=gitops.commit({path: manifest}, "Invite Ada"))
    first = invitations.wait_for_phase("ada", "Sent")
    (token,) = mas.tokens()
    assert token["usage_limit"] == 1

    _, manifest = gitops.repo.invitation("ada", **{**ADA, "usageLimit": 3, "validFor": "720h"})
    edited = gitops.commit({path: manifest}, "Ada may invite her team")
    kustomization = gitops.invitations_kustomization(commit=edited)
    assert kustomization["status"]["lastAppliedRevision"] == revision(edited)
    (token_after,) = mas.tokens()
    assert token_after["id"] == token["id"]
    assert token_after["usage_limit"] == 3
    assert token_after["expires_at"] > token["expires_at"]
    body = invitations.get("ada")
    assert body is not None
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"] > 1

    _, manifest = gitops.repo.invitation("ada", **{**ADA, "usageLimit": 3, "revoked": True})
    revoked = gitops.commit({path: manifest}, "Withdraw Ada's invitation")
    gitops.invitations_kustomization(commit=revoked)
    assert invitations.status("ada")["phase"] == "Revoked"
    (token_revoked,) = mas.tokens()
    assert token_revoked["revoked_at"] is not None
    assert not token_revoked["valid"]
    assert first["status"]["tokenId"] == token_revoked["id"]
    # Only the first mail: edits change the token, they do not mail the invitee again.
    time.sleep(1)
    assert [m.rcpt_tos[0] for m in smtp.messages] == ["ada@example.org"]


def test_file_removed_from_git_is_pruned_and_its_token_revoked(
    gitops: GitOps,
    invitations: InvitationsApi,
    mas: MasDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    path, manifest = gitops.repo.invitation("ada", **ADA)
    gitops.invitations_kustomization(commit=gitops.commit({path: manifest}, "Invite Ada"))
    secret_name = invitations.wait_for_phase("ada", "Sent")["status"]["secretName"]
    assert invitations.secret(secret_name) is not None

    removed = gitops.commit({path: None}, "Ada no longer invited")
    kustomization = gitops.invitations_kustomization(commit=removed)
    assert kustomization["status"]["inventory"]["entries"] == []
    invitations.wait_gone("ada")
    (token,) = mas.tokens()
    assert token["revoked_at"] is not None
    # Git keeps no empty folder: without the placeholder the path is gone, and Flux fails
    # before it even attempts the revision (lastAttemptedRevision stays at the previous one).
    gitops.commit({f"{INVITATIONS_DIR}/.keep": None}, "Nothing left in the folder")

    def path_not_found() -> bool:
        ready = ready_condition(gitops.flux.kustomization("invitations"))
        return ready.get("status") == "False" and "path not found" in ready.get("message", "")

    wait_until("Flux reports the missing path", path_not_found, 60)
    gone = gitops.flux.kustomization("invitations")
    assert gone["status"]["lastAppliedRevision"] == revision(removed)
    wait_until(
        "the token Secret is garbage-collected", lambda: invitations.secret(secret_name) is None, 30
    )
