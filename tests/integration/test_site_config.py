"""The operator reads MAS's site-config: the mail follows MAS's real sign-up (no code step when
MAS sends no code, the server name MAS serves), and a MAS that lets anyone sign up without a
token shows as a Warning Event on each new Invitation and as a metric, until MAS is fixed.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess
from tests.unit.test_mail_sign_up import UPSTREAM_STEPS, upstream_steps

pytestmark = pytest.mark.integration

GAUGE = "matrix_invite_registration_not_token_gated"


def gauge(process: OperatorProcess) -> float | None:
    port = process.env["MATRIX_INVITE_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == GAUGE:
                return sample.value
    return None


def wait_for_gauge(process: OperatorProcess, wanted: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    seen = gauge(process)
    while seen != wanted and time.monotonic() < deadline:
        time.sleep(0.3)
        seen = gauge(process)
    assert seen == wanted, f"{GAUGE} is {seen}, not {wanted}"


def test_the_mail_and_the_warnings_follow_mas_s_site_config(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    mas.configure_site(
        server_name="chat.example.com",
        password_registration_email_required=False,
        password_registration_token_required=False,
    )
    process = start_operator(MATRIX_INVITE_SERVER_NAME="")  # empty: the one MAS serves
    wait_for_gauge(process, 1.0)

    invitations.apply("ada", email="ada@example.org")
    invitations.wait_for_phase("ada", "Sent")
    (warning,) = [
        e
        for e in invitations.wait_for_events("ada", "RegistrationNotTokenGated")
        if e["reason"] == "RegistrationNotTokenGated"
    ]
    assert warning["type"] == "Warning"
    assert warning["message"].startswith(
        "MAS lets anyone sign up with a password without a registration token"
    )
    (mail,) = smtp.wait_for_sync(1, timeout=10)
    text = mail.text or ""
    assert "Matrix server chat.example.com" in text
    assert "6-digit" not in text
    assert "4. Finally, you may enter a display name, or skip this step." in text

    # The admin fixes MAS and restarts it: the next sync interval notices.
    mas.configure_site(password_registration_token_required=True)
    wait_for_gauge(process, 0.0)
    invitations.apply("bob", email="bob@example.org")
    invitations.wait_for_phase("bob", "Sent")
    assert "RegistrationNotTokenGated" not in invitations.event_reasons("bob")


def test_with_authentik_the_only_way_in_the_operator_mails_the_observed_steps(
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """MAS as observed (mas/FACTS.md): passwords off, Authentik the only provider, its token
    required. The operator reads site-config and upstream-oauth-providers from the double and
    mails exactly the observed steps; a provider that stops requiring a token is reported."""
    mas.configure_upstream_only()
    process = start_operator()
    wait_for_gauge(process, 0.0)

    invitations.apply("ada", email="ada@example.org")
    invitations.wait_for_phase("ada", "Sent")
    (mail,) = smtp.wait_for_sync(1, timeout=10)
    assert upstream_steps(mail.text or "") == UPSTREAM_STEPS["en"]
    assert "RegistrationNotTokenGated" not in invitations.event_reasons("ada")

    # A second provider without a token: MAS now shows a page of buttons, and anyone with an
    # account there gets in.
    mas.add_upstream_provider("GitHub", registration_token_required=False)
    wait_for_gauge(process, 1.0)
    invitations.apply("bob", email="bob@example.org")
    invitations.wait_for_phase("bob", "Sent")
    (warning,) = [
        e
        for e in invitations.wait_for_events("bob", "RegistrationNotTokenGated")
        if e["reason"] == "RegistrationNotTokenGated"
    ]
    assert "upstream provider GitHub lets anyone" in warning["message"]
    mails = smtp.wait_for_sync(2, timeout=10)
    text = mails[-1].text or ""
    assert '- "Continue with Authentik"\n   - "Continue with GitHub"' in text
