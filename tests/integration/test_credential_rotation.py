"""A rotated credential Secret heals a stalled operator without a restart.

The kubelet updates a mounted Secret by writing the new files beside the old ones and swapping a
symlink; `rotate` does the same with one atomic rename. The operator reads credential files
again when it uses them (the MAS client secret at each access-token renewal, the SMTP password
at each login), so the Invitation that stalled on the old credential is sent at its next retry
(2 s in tests), by the same process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.conftest import MAS_CLIENT_SECRET, SMTP_PASSWORD
from tests.integration.harness import InvitationsApi, condition
from tests.operator_process import OperatorProcess


def rotate(path: Path, value: str) -> None:
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(value)
    os.replace(staged, path)


def test_rotated_mas_client_secret_heals_without_a_restart(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "mas-client-secret"
    secret_file.write_text("the-old-client-secret")
    operator = start_operator(MATRIX_INVITE_MAS_CLIENT_SECRET_FILE=str(secret_file))
    pid = operator.pid
    invitations.apply("rotated", email="rotated@example.org")
    stalled = invitations.wait_for_phase("rotated", "Failed")
    assert condition(stalled, "Ready")["reason"] == "MasAuthFailed"  # type: ignore[index]
    assert mas.tokens() == []

    rotate(secret_file, MAS_CLIENT_SECRET)
    sent = invitations.wait_for_phase("rotated", "Sent", timeout=30)
    assert operator.returncode is None
    assert operator.pid == pid
    assert [t["id"] for t in mas.tokens()] == [sent["status"]["tokenId"]]
    assert [m.rcpt_tos[0] for m in smtp.messages] == ["rotated@example.org"]
    assert "the-old-client-secret" not in operator.logs()


def test_rotated_smtp_password_heals_without_a_restart(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text("the-old-smtp-password")
    operator = start_operator(MATRIX_INVITE_SMTP_PASSWORD_FILE=str(password_file))
    pid = operator.pid
    invitations.apply("relogin", email="relogin@example.org")
    stalled = invitations.wait_for_phase("relogin", "Failed", timeout=20)
    assert "SMTP login refused" in stalled["status"]["message"]
    assert smtp.messages == []

    rotate(password_file, SMTP_PASSWORD)
    invitations.wait_for_phase("relogin", "Sent", timeout=30)
    assert operator.returncode is None
    assert operator.pid == pid
    assert len(mas.tokens()) == 1  # the token made before the mail failed, not a second one
    assert [m.rcpt_tos[0] for m in smtp.messages] == ["relogin@example.org"]
    assert "the-old-smtp-password" not in operator.logs()
