"""What Flux reports when an Invitation cannot be made Ready, or cannot even be applied.

- MAS unavailable while Flux applies: the operator keeps the Invitation Reconciling, the guide's
  ``healthCheckExprs`` keep Flux waiting, and at the Kustomization's timeout its Ready turns False
  with a message that names the Invitation. Once MAS answers again the operator sends the
  invitation and Flux's next attempt turns Ready for the same commit.
- One invalid Invitation in a commit: the API server refuses it; the Kustomization's message names
  the object and carries the API server's reason. The valid Invitation in the same commit is not
  applied either (kustomize-controller validates the whole commit with a server-side dry run
  before it applies anything), which is what the guide tells admins to expect.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.gitops.flux import revision
from tests.gitops.loop import GitOps
from tests.integration.harness import InvitationsApi, condition
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


def test_mas_down_while_flux_applies_then_back(
    gitops: GitOps,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    mas.fail_next(100_000, 503)
    path, manifest = gitops.repo.invitation("ada", email="ada@example.org", usageLimit=1)
    commit = gitops.commit({path: manifest}, "Invite Ada while MAS is down")

    failing = gitops.invitations_kustomization(commit=commit, ready="False", timeout=90)
    message = condition(failing, "Ready")["message"]  # type: ignore[index]
    assert f"Invitation/{gitops.namespace}/ada" in message
    # Flux gave up waiting (its timeout, 30 s at the least), not on a failed Invitation.
    assert "timeout waiting for" in message
    assert failing["status"].get("lastAppliedRevision") != revision(commit)
    pending = invitations.get("ada")
    assert pending is not None
    assert condition(pending, "Ready")["status"] != "True"  # type: ignore[index]
    assert condition(pending, "Reconciling")["status"] == "True"  # type: ignore[index]
    assert mas.tokens() == []

    mas.clear_faults()
    healed = gitops.invitations_kustomization(commit=commit, timeout=90)
    assert healed["status"]["lastAppliedRevision"] == revision(commit)
    assert invitations.status("ada")["phase"] == "Sent"
    assert len(mas.tokens()) == 1
    assert [m.rcpt_tos[0] for m in smtp.wait_for_sync(1, timeout=10)] == ["ada@example.org"]


def test_one_invalid_invitation_names_itself_and_holds_back_the_commit(
    gitops: GitOps,
    invitations: InvitationsApi,
    mas: MasDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    good_path, good = gitops.repo.invitation("ada", email="ada@example.org", usageLimit=1)
    bad_path, bad = gitops.repo.invitation("bob", email="bob@example.org", usageLimit=0)
    commit = gitops.commit({good_path: good, bad_path: bad}, "Invite Ada and Bob")

    failing = gitops.invitations_kustomization(commit=commit, ready="False", timeout=60)
    ready = condition(failing, "Ready")
    assert ready is not None
    assert f"Invitation/{gitops.namespace}/bob" in ready["message"]
    # The API server's own words from the CRD's schema.
    assert "spec.usageLimit" in ready["message"]
    assert "greater than or equal to 1" in ready["message"]
    # Nothing of the commit is applied: Ada waits for Bob's file to be fixed.
    assert invitations.get("ada") is None
    assert invitations.get("bob") is None
    assert mas.tokens() == []

    _, fixed = gitops.repo.invitation("bob", email="bob@example.org", usageLimit=1)
    repaired = gitops.commit({bad_path: fixed}, "Bob may sign up once")
    gitops.invitations_kustomization(commit=repaired, timeout=60)
    assert invitations.status("ada")["phase"] == "Sent"
    assert invitations.status("bob")["phase"] == "Sent"
    assert len(mas.tokens()) == 2
