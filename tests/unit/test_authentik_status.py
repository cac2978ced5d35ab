"""authentik's invitation in status and in logs: the CRD and the model agree on the nested
object, and a log line never carries an invitation's key (the enrollment link's secret)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from matrix_invite_operator.authentik import InvitationPathRedaction
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.models import AuthentikInvitationStatus, EnrollmentState
from matrix_invite_operator.settings import Settings

from tests.unit.test_crd_models import _compare, _crd_schema

KEY = "0b7c8a4e-2f1d-4c3b-9a8e-5d6f7a8b9c0d"


def test_the_nested_status_matches_the_crd() -> None:
    crd = _crd_schema()["properties"]["status"]["properties"]["authentikInvitation"]
    assert _compare(AuthentikInvitationStatus, crd, {}) == []
    assert crd["properties"]["state"]["enum"] == [s.value for s in EnrollmentState]


def test_the_comparison_sees_a_drifted_nested_field() -> None:
    crd = _crd_schema()["properties"]["status"]["properties"]["authentikInvitation"]
    del crd["properties"]["mailedId"]
    assert _compare(AuthentikInvitationStatus, crd, {}) != []


def _redacted(message: str, *args: object) -> str:
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, message, args, None)
    InvitationPathRedaction().filter(record)
    return record.getMessage()


def test_request_lines_and_links_lose_the_key() -> None:
    line = _redacted(
        'HTTP Request: %s %s "HTTP/1.1 204 No Content"',
        "DELETE",
        f"https://auth.example.org/api/v3/stages/invitation/invitations/{KEY}/",
    )
    assert KEY not in line
    assert "invitations/<redacted>/" in line
    link = _redacted("mailing https://auth.example.org/if/flow/f/?itoken=%s", KEY)
    assert KEY not in link
    listing = "GET https://auth.example.org/api/v3/stages/invitation/invitations/?name=x"
    assert _redacted(listing) == listing  # nothing secret in a listing


def test_authentik_settings_name_what_is_missing(tmp_path: Path) -> None:
    assert not Settings().authentik_enabled
    Settings().require_authentik()  # off: nothing to check
    half = Settings(authentik_url="https://auth.example.org")
    with pytest.raises(ConfigurationError) as missing:
        half.require_authentik()
    assert "MATRIX_INVITE_AUTHENTIK_API_TOKEN_FILE" in str(missing.value)
    assert "MATRIX_INVITE_AUTHENTIK_FLOW_SLUG" in str(missing.value)
    token = tmp_path / "token"
    token.write_text("s3cret-api-token\n")
    whole = Settings(
        authentik_url="https://auth.example.org",
        authentik_api_token_file=token,
        authentik_flow_slug="matrix-invitation",
    )
    whole.require_authentik()
    assert whole.authentik_api_token_value().get_secret_value() == "s3cret-api-token"
    assert "s3cret" not in repr(whole)
