"""Bad input and a misconfigured operator: rejected at admission, or Stalled with a clear message.

What the CRD schema can check, the API server rejects (the kubectl message is asserted); what
needs the clock or the operator's settings, the operator catches before calling MAS. A
misconfigured operator keeps running and says what to fix, once per retry, not in a crash loop.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.doubles.mas import TOKENS_PATH, MasDouble
from tests.doubles.smtp import SmtpDouble, make_certificates
from tests.integration.conftest import MAS_CLIENT_ID, MAS_CLIENT_SECRET
from tests.integration.harness import InvitationsApi, condition, wait_until
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration


# Each case with the words of the API server's answer that tell the admin what is wrong.
REJECTED = {
    "malformed": ({"email": "not-an-address"}, "spec.email: Invalid value"),
    "display-name-form": ({"email": "Ada <ada@example.org>"}, "spec.email: Invalid value"),
    "both-expiries": (
        {"email": "ada@example.org", "expiresAt": "2030-01-01T00:00:00Z", "validFor": "24h"},
        "set either expiresAt or validFor, not both",
    ),
    "limit-0": ({"email": "ada@example.org", "usageLimit": 0}, "spec.usageLimit: Invalid value"),
    "limit-101": (
        {"email": "ada@example.org", "usageLimit": 101},
        "spec.usageLimit: Invalid value",
    ),
    "crlf-name": (
        {"email": "ada@example.org", "displayName": "Ada\r\nBcc: x@example.org"},
        "spec.displayName: Invalid value",
    ),
    "encoded-word-name": (
        {"email": "ada@example.org", "displayName": "=?utf-8?q?Ada=0D=0ABcc:_x@example.org?="},
        "spec.displayName: Invalid value",
    ),
    "control-character-name": (
        {"email": "ada@example.org", "displayName": "Ada\x0bBcc"},
        "spec.displayName: Invalid value",
    ),
    "bad-duration": (
        {"email": "ada@example.org", "validFor": "a week"},
        "spec.validFor: Invalid value",
    ),
    "unknown-field": (
        {"email": "ada@example.org", "favouriteColour": "blue"},
        'unknown field "spec.favouriteColour"',
    ),
    "long-email": ({"email": "a" * 250 + "@example.org"}, "spec.email: Too long"),
    "long-name": (
        {"email": "ada@example.org", "displayName": "x" * 257},
        "spec.displayName: Too long",
    ),
    "long-duration": (
        {"email": "ada@example.org", "validFor": "1" * 40 + "h"},
        "spec.validFor: Too long",
    ),
    "locale": ({"email": "ada@example.org", "locale": "fr"}, "spec.locale: Unsupported value"),
    "crlf-resend": ({"email": "ada@example.org", "resend": "again\nand again"}, "spec.resend"),
}


@pytest.mark.parametrize(("spec", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_api_server_rejects_bad_invitations(
    invitations: InvitationsApi, spec: dict[str, object], message: str
) -> None:
    result = invitations.cp.kubectl(
        "-n",
        invitations.namespace,
        "apply",
        "-f",
        "-",
        input=invitations.manifest("bad", **spec),
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert invitations.get("bad") is None


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> Iterator[OperatorProcess]:
    process = start_operator(MATRIX_INVITE_MAX_VALIDITY="720h")
    yield process
    assert process.returncode is None, process.log_tail()


@pytest.mark.usefixtures("operator")
def test_expiry_in_the_past_stalls_without_calling_mas(
    invitations: InvitationsApi, mas: MasDouble
) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    invitations.apply("late", email="late@example.org", expiresAt=past)
    body = invitations.wait_for_phase("late", "Failed")
    stalled = condition(body, "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert "has passed" in stalled["message"]
    assert "spec.expiresAt" in stalled["message"]
    assert mas.request_count("POST", TOKENS_PATH) == 0
    # Fixing the spec heals it: the update handler runs again.
    invitations.patch_spec("late", expiresAt=None, validFor="24h")
    invitations.wait_for_phase("late", "Sent")


@pytest.mark.usefixtures("operator")
def test_validity_beyond_the_maximum_stalls(invitations: InvitationsApi, mas: MasDouble) -> None:
    invitations.apply("long", email="long@example.org", validFor="1000h")
    body = invitations.wait_for_phase("long", "Failed")
    assert "longer than this installation allows (30 days" in body["status"]["message"]
    assert mas.request_count("POST", TOKENS_PATH) == 0


def test_missing_mas_credentials_keep_the_operator_up_and_say_what_is_missing(
    invitations: InvitationsApi, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator(MATRIX_INVITE_MAS_CLIENT_ID="")
    invitations.apply("nocreds", email="nocreds@example.org")
    body = invitations.wait_for_phase("nocreds", "Failed")
    ready = condition(body, "Ready")
    assert ready is not None
    assert ready["reason"] == "OperatorMisconfigured"
    assert "MATRIX_INVITE_MAS_CLIENT_ID" in ready["message"]
    # A retry interval (2 s in tests) later, still running, no log flood: Kopf logged two tries.
    wait_until(
        "a retry of the misconfigured operator",
        lambda: len(operator.log_lines("failed temporarily", "MATRIX_INVITE_MAS_CLIENT_ID")) >= 2,
        30,
    )
    assert operator.returncode is None
    assert 1 <= operator.logs().count("MATRIX_INVITE_MAS_CLIENT_ID") <= 6


def test_wrong_client_secret_stalls_with_advice(
    invitations: InvitationsApi, start_operator: Callable[..., OperatorProcess], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-client-secret")
    operator = start_operator(MATRIX_INVITE_MAS_CLIENT_SECRET_FILE=str(wrong))
    invitations.apply("badsecret", email="badsecret@example.org")
    body = invitations.wait_for_phase("badsecret", "Failed")
    assert condition(body, "Ready")["reason"] == "MasAuthFailed"  # type: ignore[index]
    assert MAS_CLIENT_ID in body["status"]["message"]
    assert "not-the-client-secret" not in operator.logs()
    assert operator.returncode is None


@pytest.fixture
def mas_tls(tmp_path: Path) -> Iterator[tuple[MasDouble, Path]]:
    certs = make_certificates(tmp_path / "mas-tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_path, certs.key_path)
    with MasDouble(client_id=MAS_CLIENT_ID, client_secret=MAS_CLIENT_SECRET, tls=context) as mas:
        yield mas, certs.ca_path
    assert mas.spec_violations == []


def test_mas_over_https_with_a_custom_ca_bundle(
    invitations: InvitationsApi,
    smtp: SmtpDouble,
    mas_tls: tuple[MasDouble, Path],
    start_operator: Callable[..., OperatorProcess],
) -> None:
    mas, ca_bundle = mas_tls
    assert mas.url.startswith("https://")
    start_operator(MATRIX_INVITE_MAS_URL=mas.url, MATRIX_INVITE_MAS_CA_BUNDLE=str(ca_bundle))
    invitations.apply("secure", email="secure@example.org")
    invitations.wait_for_phase("secure", "Sent")
    assert len(mas.tokens()) == 1


def test_untrusted_mas_certificate_fails_clearly(
    invitations: InvitationsApi,
    mas_tls: tuple[MasDouble, Path],
    start_operator: Callable[..., OperatorProcess],
) -> None:
    mas, _ = mas_tls
    start_operator(MATRIX_INVITE_MAS_URL=mas.url)  # no CA bundle: the system store does not know it
    invitations.apply("untrusted", email="untrusted@example.org")
    body = invitations.wait_for_phase("untrusted", "Failed")
    message = body["status"]["message"]
    assert "TLS certificate we do not trust" in message
    assert "MATRIX_INVITE_MAS_CA_BUNDLE" in message
    assert mas.tokens() == []
