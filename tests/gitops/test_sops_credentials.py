"""The operator's credentials, committed SOPS-encrypted, rotated in Git, used without a restart.

The Secret ``matrix-invite-operator-mas`` is committed encrypted with the guide's ``.sops.yaml``
(an age key made by the built ``age-keygen``, ``sops`` built from the module proxy);
kustomize-controller decrypts it with the ``sops-age`` Secret and applies it. In a cluster the
kubelet would then rewrite the file the operator's Pod mounts from it. There is no kubelet here:
:class:`~tests.gitops.projector.SecretProjector` plays that part, copying the applied Secret's key
to the file ``MATRIX_INVITE_MAS_CLIENT_SECRET_FILE`` names. Everything before the file (Git, SOPS,
Flux, the Secret) and after it (the operator re-reading the file) is real.

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
from tests.gitops.loop import OPERATOR_KUSTOMIZATION, GitOps
from tests.gitops.projector import SecretProjector
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
    secrets_path, secrets = gitops.repo.operator_secrets(OLD_SECRET, SMTP_PASSWORD)
    old = gitops.commit({secrets_path: secrets}, "The operator's MAS client secret")
    committed = gitops.repo.git.show(secrets_path)
    assert OLD_SECRET not in committed
    assert SMTP_PASSWORD not in committed
    assert "ENC[AES256_GCM" in committed
    gitops.flux.wait_kustomization(OPERATOR_KUSTOMIZATION, commit=old)
    with SecretProjector(
        gitops.cp,
        gitops.namespace,
        {
            ("matrix-invite-operator-mas", "client-secret"): secret_file,
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

        secrets_path, secrets = gitops.repo.operator_secrets(MAS_CLIENT_SECRET, SMTP_PASSWORD)
        rotated = gitops.commit({secrets_path: secrets}, "Rotate the MAS client secret")
        gitops.flux.wait_kustomization(OPERATOR_KUSTOMIZATION, commit=rotated)
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
