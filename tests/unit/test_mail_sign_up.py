"""The sign-up steps in the mail follow the backend: MAS's page, or Element asking Synapse.

MAS's own sign-up page mails a 6-digit code besides asking for the token, so its steps tell the
two apart. With Synapse the invitee signs up in a Matrix client (Element) that asks for the
token; there is no code to mention, but a sign-up left halfway holds a pending use.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.mail import Locale, MailContext, MailRenderer, RenderedMail
from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.reconcile import Invitation
from matrix_invite_operator.runtime import build_mailer
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

TOKEN = "Zq7Rk2Lm9Xw4Pb8Tn3Vc6Hd1"
ELEMENT = "https://app.element.io/#/register"


def render(sign_up: str, locale: Locale = "en") -> RenderedMail:
    return MailRenderer().render(
        MailContext.model_validate(
            {
                "email": "ada@example.org",
                "display_name": "Ada",
                "token": SecretStr(TOKEN),
                "registration_url": ELEMENT,
                "expires_at": dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC),
                "inviter": "Alice Admin",
                "server_name": "example.org",
                "locale": locale,
                "sign_up": sign_up,
            }
        )
    )


def visible(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_mas_stays_the_default() -> None:
    ctx = MailContext(
        email="a@example.org",
        token=SecretStr(TOKEN),
        registration_url=ELEMENT,
        inviter="x",
        server_name="example.org",
    )
    assert ctx.sign_up == "mas"
    with pytest.raises(ValueError, match="sign_up"):
        MailContext.model_validate({**ctx.model_dump(), "sign_up": "dendrite"})


@pytest.mark.parametrize(
    ("locale", "steps"),
    [
        (
            "en",
            [
                "1. Open the link above. It opens Element",
                "2. Check that the server shown is example.org",
                "3. Choose a username and a password",
                "registration token, paste the token",
                "5. Finish the sign-up",
                "finish the sign-up in one\ngo",
            ],
        ),
        (
            "de",
            [
                "Er öffnet die Registrierung von Element",
                "2. Prüfen Sie, dass als Server example.org",
                "3. Wählen Sie einen Benutzernamen und ein Passwort",
                "Registrierungs-Token gefragt",
                "5. Schließen Sie die Registrierung ab",
                "Registrierung in einem Zug ab",
            ],
        ),
    ],
)
def test_synapse_steps_are_elements_in_order(locale: Locale, steps: list[str]) -> None:
    text = render("synapse", locale).text
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    assert TOKEN in text
    assert ELEMENT in text


@pytest.mark.parametrize("locale", ["en", "de"])
def test_synapse_mail_mentions_no_6_digit_code(locale: Locale) -> None:
    mail = render("synapse", locale)
    for part in (mail.text, visible(mail.html)):
        assert "6-digit" not in part
        assert "6-stellig" not in part
        assert "Element" in part
        assert TOKEN in part


@pytest.mark.parametrize("locale", ["en", "de"])
def test_mas_mail_keeps_its_code_steps_and_no_element(locale: Locale) -> None:
    mail = render("mas", locale)
    code = "6-digit" if locale == "en" else "6-stellig"
    for part in (mail.text, visible(mail.html)):
        assert code in part
        assert "Element" not in part


@pytest.mark.parametrize("locale", ["en", "de"])
def test_html_steps_match_the_text_steps(locale: Locale) -> None:
    mail = render("synapse", locale)
    html = visible(mail.html)
    word = "Edit" if locale == "en" else "Bearbeiten"
    assert word in html
    assert word in mail.text
    assert html.count("<li") == 0  # tags stripped: the sanity check of `visible`
    assert mail.html.count("<li") == 5


def test_the_mailer_chooses_the_sign_up_from_the_backend_setting() -> None:
    invitation = Invitation(
        namespace="ns",
        name="ada",
        uid="uid",
        generation=1,
        created=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
        spec=InvitationSpec(email="ada@example.org"),
        status=InvitationStatus(),
    )
    state = TokenState(id="syn-x", token=SecretStr(TOKEN), valid=True, usage_limit=1, times_used=0)
    for backend in ("mas", "synapse"):
        mailer = build_mailer(Settings(backend=backend, registration_url=ELEMENT))
        ctx = mailer.context_for(invitation, token=SecretStr(TOKEN), token_state=state)
        assert ctx.sign_up == backend


def test_the_startup_check_renders_both_sign_ups(tmp_path: Path) -> None:
    MailRenderer().check()
    # An admin template broken only in the Synapse branch fails at startup, not on a mail.
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "body.txt").write_text(
        '{{ token }}{% if sign_up == "synapse" %}{{ no_such_variable }}{% endif %}'
    )
    with pytest.raises(ConfigurationError, match="no_such_variable"):
        MailRenderer(tmp_path).check()
