"""`doctor` on the authentik side, run as an admin runs it (a subprocess) against the MAS, SMTP
and authentik doubles: the healthy lines, and the exact line for each way the authentik side can
be wrong, with its fix. The API token never appears in the output, and no probe is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.test_doctor import SMTP_PASSWORD, SMTP_USER, doctor
from tests.doubles.authentik import (
    ADD,
    DELETE,
    OPERATOR_PERMISSIONS,
    AuthentikDouble,
)
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble

FLOW = "matrix-invitation"


@pytest.fixture
def smtp() -> Iterator[SmtpDouble]:
    with SmtpDouble(mode="starttls", username=SMTP_USER, password=SMTP_PASSWORD) as double:
        yield double


@pytest.fixture
def authentik() -> Iterator[AuthentikDouble]:
    with AuthentikDouble(flow_slug=FLOW) as double:
        yield double
    assert double.spec_violations == []
    assert double.request_violations == []


def authentik_lines(
    tmp_path: Path,
    mas: MasDouble,
    smtp: SmtpDouble,
    authentik: AuthentikDouble,
    *,
    token: str | None = None,
    slug: str = FLOW,
) -> tuple[int, list[str]]:
    (tmp_path / "authentik-token").write_text(token or authentik.api_token)
    result = doctor(
        tmp_path,
        mas.url,
        smtp,
        MATRIX_INVITE_AUTHENTIK_URL=authentik.url,
        MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE=str(tmp_path / "authentik-token"),
        MATRIX_INVITE_AUTHENTIK_FLOW_SLUG=slug,
    )
    assert authentik.api_token not in result.stdout
    left = authentik.invitations()
    assert all(i.expires < authentik.clock() for i in left), "a usable probe was left behind"
    lines = [line for line in result.stdout.splitlines() if " authentik" in line]
    return result.returncode, lines


def test_a_working_authentik_side_passes(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble, authentik: AuthentikDouble
) -> None:
    code, lines = authentik_lines(tmp_path, mas_double, smtp, authentik)
    assert authentik.invitations() == []
    assert lines == [
        "OK    authentik token: accepted; may view invitations",
        "OK    authentik flow: matrix-invitation (enrollment) has the Invitation stage "
        "matrix-invitation-invitation",
        "OK    authentik invitations: may add and delete them (a probe, expired before it was "
        "made, was added and deleted)",
    ]
    assert code == 0


def test_a_refused_token_fails_with_the_fix(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble, authentik: AuthentikDouble
) -> None:
    code, lines = authentik_lines(tmp_path, mas_double, smtp, authentik, token="app-password")
    assert lines == [
        "FAIL  authentik token: authentik refused the API token listing invitations (Token "
        "invalid/expired): put a valid token of intent 'api' (not the service account's app "
        "password) into the file MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE names; the operator "
        "reads it again",
    ]
    assert code == 1


def test_a_flow_without_an_invitation_stage_fails(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble, authentik: AuthentikDouble
) -> None:
    authentik.remove_invitation_stage(FLOW)
    code, lines = authentik_lines(tmp_path, mas_double, smtp, authentik)
    assert lines[1] == (
        "FAIL  authentik flow: matrix-invitation has no Invitation stage: the link's itoken would "
        "be ignored and the invitee not bound; bind an Invitation stage first in the flow "
        "(order 5 in the guide's blueprint)"
    )
    assert code == 1


def test_an_unknown_flow_fails(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble, authentik: AuthentikDouble
) -> None:
    code, lines = authentik_lines(tmp_path, mas_double, smtp, authentik, slug="enrolment")
    assert lines[1] == (
        "FAIL  authentik flow: authentik has no flow with the slug 'enrolment': set "
        "MATRIX_INVITE_AUTHENTIK_FLOW_SLUG to the invitation enrollment flow's slug, or import "
        "the guide's blueprint"
    )
    assert code == 1


@pytest.mark.parametrize("missing", [ADD, DELETE])
def test_a_role_without_add_or_delete_fails_naming_it(
    tmp_path: Path,
    mas_double: MasDouble,
    smtp: SmtpDouble,
    authentik: AuthentikDouble,
    missing: str,
) -> None:
    authentik.permissions(set(OPERATOR_PERMISSIONS) - {missing})
    code, lines = authentik_lines(tmp_path, mas_double, smtp, authentik)
    assert lines[2].startswith("FAIL  authentik invitations: authentik's API token may not do")
    assert f"give the token's service account a role with {missing}" in lines[2]
    assert code == 1
    # The probe it could not delete expired before it was made: nobody can use it.
    assert len(authentik.invitations()) == (1 if missing == DELETE else 0)
