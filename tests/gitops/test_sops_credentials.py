"""The operator's credentials, committed SOPS-encrypted, rotated in Git, used without a restart.

The MAS client secret lives only in ESS's Secret ``ess-invite-operator`` of docs/install-ess.md
step 1 (the one MAS reads too), committed where docs/install-flux.md's layout puts it (``ess/``),
encrypted with the guide's ``.sops.yaml`` (an age key made by the built ``age-keygen``, ``sops``
built from the module proxy); kustomize-controller decrypts it with the ``sops-age`` Secret and
applies it, and the operator's Kustomization waits for that one (``dependsOn``). In a cluster the
kubelet would then rewrite the file the operator's Pod mounts from it. There is no kubelet here:
:class:`~tests.gitops.projector.SecretProjector` plays that part, copying the applied Secret's key
to the file ``MATRIX_INVITE_MAS_CLIENT_SECRET_FILE`` names. Everything before the file (Git, SOPS,
Flux, the Secret) and after it (the operator re-reading the file) is real. (MAS itself would need
a restart to take a new secret, docs/install-ess.md step 6; the MAS double is given it directly.)

The operator starts with the old client secret, which MAS refuses: the Invitation stalls and the
Kustomization says so. Committing the new encrypted value heals it: same operator process, token
issued, mail sent, Kustomization Ready at the new commit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.gitops.loop import OPERATOR_KUSTOMIZATION, GitOps, ess_kustomization_name
from tests.gitops.projector import SecretProjector
from tests.gitops.repository import ESS_SECRET
from tests.integration.conftest import MAS_CLIENT_SECRET, SMTP_PASSWORD
from tests.integration.harness import InvitationsApi, condition, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

OLD_SECRET = "the-old-client-secret"


def test_encrypted_credentials_rotated_in_git_reach_the_running_operator(
    gitops: GitOps,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    secrets_dir: Path,
) -> None:
    secret_file = secrets_dir / "mas-client-secret"
    ess = ess_kustomization_name()
    ess_path, ess_secret = gitops.repo.ess_secret(OLD_SECRET)
    old = gitops.commit({ess_path: ess_secret}, "The operator's MAS client secret")
    committed = gitops.repo.git.show(ess_path)
    assert OLD_SECRET not in committed
    assert "ENC[AES256_GCM" in committed
    smtp_path, _ = gitops.repo.operator_secrets(SMTP_PASSWORD)
    committed_smtp = gitops.repo.git.show(smtp_path)
    assert SMTP_PASSWORD not in committed_smtp
    assert "ENC[AES256_GCM" in committed_smtp
    gitops.flux.wait_kustomization(ess, commit=old)
    gitops.flux.wait_kustomization(OPERATOR_KUSTOMIZATION, commit=old)
    with SecretProjector(
        gitops.cp,
        gitops.namespace,
        {
            (ESS_SECRET, "client-secret"): secret_file,
            ("matrix-invite-operator-smtp", "password"): secrets_dir / "smtp-password",
        },
    ) as projector:
        wait_until(
            "the decrypted old secret is projected",
            lambda: secret_file.read_text() == OLD_SECRET,
            20,
        )
        operator = start_operator()
        pid = operator.pid

        path, manifest = gitops.repo.invitation("ada", email="ada@example.org", usageLimit=1)
        stalled_at = gitops.commit({path: manifest}, "Invite Ada")
        stalled = gitops.invitations_kustomization(commit=stalled_at, ready="False", timeout=60)
        assert f"Invitation/{gitops.namespace}/ada" in condition(stalled, "Ready")["message"]  # type: ignore[index]
        failed = invitations.wait_for_phase("ada", "Failed")
        assert condition(failed, "Ready")["reason"] == "MasAuthFailed"  # type: ignore[index]
        assert mas.tokens() == []

        ess_path, ess_secret = gitops.repo.ess_secret(MAS_CLIENT_SECRET)
        rotated = gitops.commit({ess_path: ess_secret}, "Rotate the MAS client secret")
        gitops.flux.wait_kustomization(ess, commit=rotated)
        wait_until(
            "the rotated secret is projected",
            lambda: secret_file.read_text() == MAS_CLIENT_SECRET,
            20,
        )
        healed = gitops.invitations_kustomization(commit=rotated, timeout=90)
        assert healed["status"]["lastAppliedRevision"].endswith(rotated)
        assert projector.writes >= 2

    sent = invitations.wait_for_phase("ada", "Sent")
    assert operator.pid == pid
    assert operator.returncode is None
    assert [t["id"] for t in mas.tokens()] == [sent["status"]["tokenId"]]
    assert [m.rcpt_tos[0] for m in smtp.wait_for_sync(1, timeout=10)] == ["ada@example.org"]
    assert OLD_SECRET not in operator.logs()
