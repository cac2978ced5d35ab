"""The sign-up steps in the mail follow the installation: MAS's password registration, MAS
through an upstream identity provider, or Element asking Synapse.

MAS's password registration mails a 6-digit code besides asking for the token, so its steps tell
the two apart. Through an upstream provider (Authentik, say) the invitee chooses no password and
is asked for the token after logging in there. With Synapse the invitee signs up in a Matrix
client (Element) that asks for the token; there is no code to mention, but a sign-up left
halfway holds a pending use.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.mail import Locale, MailContext, MailRenderer, RenderedMail
from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.runtime import build_mailer
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

TOKEN = "Zq7Rk2Lm9Xw4Pb8Tn3Vc6Hd1"
ELEMENT = "https://app.element.io/#/register"


def render(
    sign_up: str, locale: Locale = "en", upstream_provider: str | None = None
) -> RenderedMail:
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
                "upstream_provider": upstream_provider,
            }
        )
    )


def visible(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_mas_password_registration_stays_the_default() -> None:
    ctx = MailContext(
        email="a@example.org",
        token=SecretStr(TOKEN),
        registration_url=ELEMENT,
        inviter="x",
        server_name="example.org",
    )
    assert ctx.sign_up == "mas-password"
    assert ctx.upstream_provider is None
    for wrong in ("dendrite", "mas"):
        with pytest.raises(ValueError, match="sign_up"):
            MailContext.model_validate({**ctx.model_dump(), "sign_up": wrong})


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
                "Registrierungstoken gefragt",
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
def test_mas_mail_keeps_its_code_steps_and_names_element_only_for_after_sign_up(
    locale: Locale,
) -> None:
    mail = render("mas-password", locale)
    code = "6-digit" if locale == "en" else "6-stellig"
    for part in (mail.text, visible(mail.html)):
        assert code in part
        assert part.count("Element") == 1
        assert "Element X" in part


@pytest.mark.parametrize("locale", ["en", "de"])
def test_html_steps_match_the_text_steps(locale: Locale) -> None:
    mail = render("synapse", locale)
    html = visible(mail.html)
    word = "Edit" if locale == "en" else "Bearbeiten"
    assert word in html
    assert word in mail.text
    assert html.count("<li") == 0  # tags stripped: the sanity check of `visible`
    assert mail.html.count("<li") == 5


def test_the_mailer_chooses_the_sign_up_from_the_backend_and_mas_sign_up_settings() -> None:
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
    for backend, mas_sign_up, expected in [
        ("mas", "password", "mas-password"),
        ("mas", "upstream", "mas-upstream"),
        ("synapse", "password", "synapse"),
        ("synapse", "upstream", "synapse"),  # MAS's setting means nothing without MAS
    ]:
        settings = Settings(
            backend=backend,
            mas_sign_up=mas_sign_up,
            mas_upstream_provider_name="Authentik",
            registration_url=ELEMENT,
            server_name="example.org",
        )
        ctx = build_mailer(settings).context_for(
            invitation, token=SecretStr(TOKEN), token_state=state
        )
        assert ctx.sign_up == expected
        assert ctx.upstream_provider == (None if backend == "synapse" else "Authentik")


def test_the_startup_check_renders_every_sign_up(tmp_path: Path) -> None:
    MailRenderer().check()
    # An admin template broken only in the Synapse branch fails at startup, not on a mail.
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "body.txt").write_text(
        '{{ token }}{% if sign_up == "synapse" %}{{ no_such_variable }}{% endif %}'
    )
    with pytest.raises(ConfigurationError, match="no_such_variable"):
        MailRenderer(tmp_path).check()


# --- the three MAS sign-up shapes, byte for byte -------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "mail"
FIXTURE_CASES: dict[str, dict[str, object]] = {
    "full": {
        "display_name": "Jörg <Müller> & Co",
        "usage_limit": 3,
        "expires_at": dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC),
        "timezone": "Europe/Berlin",
        "element_web_url": "https://app.example.org",
    },
    "bare": {"display_name": None, "usage_limit": 1, "expires_at": None},
}
#: What MAS's site-config makes of the sign-up: a password with the emailed 6-digit code
#: (`password_registration_email_required`, MAS's default), a password without it (here with a
#: CAPTCHA in the full case), and an upstream provider such as Authentik.
FIXTURE_SHAPES: dict[str, dict[str, dict[str, object]]] = {
    "email-code": {
        "full": {"sign_up": "mas-password", "upstream_provider": "Authentik"},
        "bare": {"sign_up": "mas-password"},
    },
    "no-email-code": {
        "full": {"sign_up": "mas-password", "email_code": False, "captcha": True},
        "bare": {"sign_up": "mas-password", "email_code": False},
    },
    # One provider, password registration off: MAS redirects straight to the provider. The
    # full case has an enrollment link as its first step (an Authentik invitation).
    "upstream": {
        "full": {
            "sign_up": "mas-upstream",
            "upstream_provider": "Authentik",
            "enrollment_url": "https://id.example.org/if/flow/matrix-invitation/?itoken=0a1b2c",
        },
        "bare": {"sign_up": "mas-upstream"},
    },
    # MAS's "Create an account" page: several providers (full: the mail follows the one the
    # settings name), or a password button beside one provider (bare: without the email code).
    "choice": {
        "full": {
            "sign_up": "mas-choice",
            "upstream_provider": "Authentik",
            "provider_buttons": ("Authentik", "GitHub"),
        },
        "bare": {
            "sign_up": "mas-choice",
            "provider_buttons": ("Authentik",),
            "password_button": True,
            "email_code": False,
        },
    },
    # Password sign-up chosen by the settings on a page that also shows a provider's button.
    "password-beside-providers": {
        "full": {
            "sign_up": "mas-password",
            "provider_buttons": ("Authentik",),
            "password_button": True,
        },
        "bare": {
            "sign_up": "mas-password",
            "provider_buttons": ("Authentik", "id.example.org/application/o/matrix/"),
            "password_button": True,
            "email_code": False,
        },
    },
}


def fixture_mail(shape: str, locale: Locale, case: str) -> RenderedMail:
    return MailRenderer().render(
        MailContext.model_validate(
            {
                "email": "joerg@example.org",
                "token": SecretStr("Zq7Rk2Lm9Xw4"),
                "registration_url": "https://auth.example.org/register",
                "inviter": "Alice Admin",
                "server_name": "example.org",
                "locale": locale,
                **FIXTURE_CASES[case],
                **FIXTURE_SHAPES[shape][case],
            }
        )
    )


@pytest.mark.parametrize("case", FIXTURE_CASES)
@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize("shape", FIXTURE_SHAPES)
def test_each_sign_up_shape_renders_byte_for_byte_as_pinned(
    shape: str, locale: Locale, case: str
) -> None:
    """Rewrite the fixtures after a deliberate change with
    `python -m tests.unit.test_mail_sign_up` and read the diff."""
    mail = fixture_mail(shape, locale, case)
    stem = FIXTURES / f"mas-{shape}-{locale}-{case}"
    assert mail.subject + "\n" == Path(f"{stem}.subject.txt").read_text(encoding="utf-8")
    assert mail.text == Path(f"{stem}.txt").read_text(encoding="utf-8")
    assert mail.html == Path(f"{stem}.html").read_text(encoding="utf-8")


def write_fixtures() -> None:
    for shape, locale, case in itertools.product(FIXTURE_SHAPES, ("en", "de"), FIXTURE_CASES):
        mail = fixture_mail(shape, locale, case)
        stem = FIXTURES / f"mas-{shape}-{locale}-{case}"
        Path(f"{stem}.subject.txt").write_text(mail.subject + "\n", encoding="utf-8")
        Path(f"{stem}.txt").write_text(mail.text, encoding="utf-8")
        Path(f"{stem}.html").write_text(mail.html, encoding="utf-8")


# --- MAS through an upstream identity provider ------------------------------------------------

#: The steps a real MAS 1.22 showed with Authentik as the only provider and passwords off
#: (mas/FACTS.md, "What an invitee goes through with an upstream provider only"), in that order,
#: with MAS's own labels (en, and MAS's German translation for de).
UPSTREAM_STEPS: dict[str, list[str]] = {
    "en": [
        "1. Open the link above. It takes you straight to the login at Authentik;\n"
        "   there is no button to choose on the way.",
        "2. Log in at Authentik.",
        '3. Back on the Matrix server, the page "Continue signing up with\n'
        '   your Authentik account" shows your username (as\n'
        '   @username:example.org): keep it or change it. Leave "Use" ticked to\n'
        "   take your email address and display name from Authentik.\n"
        '   Choose "Create Account".',
        '4. On the page "Registration token", paste the token from this\n'
        '   invitation (shown above) and choose "Continue".',
        '5. Only if the page "Choose your display name" appears (when no name\n'
        '   came from the login, or you unticked "Use"): enter a name, or choose\n'
        '   "Skip".',
    ],
    "de": [
        "1. Öffnen Sie den Link oben. Er führt Sie direkt zur Anmeldung\n"
        "   bei Authentik; unterwegs ist nichts auszuwählen.",
        "2. Melden Sie sich bei Authentik an.",
        "3. Zurück auf dem Matrix-Server zeigt die Seite „Setze die Anmeldung\n"
        "   mit Authentik Konto fort“ Ihren Benutzernamen (als\n"
        "   @benutzername:example.org): Behalten oder ändern Sie ihn. Lassen Sie\n"
        "   „Verwenden“ angehakt, um E-Mail-Adresse und Anzeigenamen von\n"
        "   Authentik zu übernehmen. Wählen Sie „Konto erstellen“.",
        "4. Fügen Sie auf der Seite „Registrierungstoken“ das Token aus dieser\n"
        "   Einladung ein (siehe oben) und wählen Sie „Weiter“.",
        "5. Nur falls die Seite „Wähle deinen Anzeigenamen“ erscheint (wenn bei\n"
        "   der Anmeldung kein Name mitkam oder Sie „Verwenden“ abgewählt haben):\n"
        "   Geben Sie einen Namen ein oder wählen Sie „Überspringen“.",
    ],
}

UPSTREAM_HTML_STEPS: dict[str, list[str]] = {
    "en": [
        "straight to the login at Authentik",
        "Log in at Authentik",
        "Continue signing up with your Authentik account",
        "Create Account",
        "Registration token",
        "Choose your display name",
    ],
    "de": [
        "direkt zur Anmeldung bei Authentik",
        "Melden Sie sich bei Authentik an",
        "Setze die Anmeldung mit Authentik Konto fort",
        "Konto erstellen",
        "Registrierungstoken",
        "Wähle deinen Anzeigenamen",
    ],
}


def upstream_steps(text: str) -> list[str]:
    """The numbered steps of a text mail, each with its continuation lines."""
    section = text.split("\n\n")
    (steps,) = [part for part in section if part.startswith("1. ")]
    return re.split(r"\n(?=\d\. )", steps)


@pytest.mark.parametrize("locale", ["en", "de"])
def test_upstream_steps_are_exactly_the_observed_ones_in_order(locale: Locale) -> None:
    mail = render("mas-upstream", locale, upstream_provider="Authentik")
    assert upstream_steps(mail.text) == UPSTREAM_STEPS[locale]
    assert mail.html.count("<li") == 6  # five steps, one app to log in with afterwards
    html = visible(mail.html)
    after_token = html.index(TOKEN)
    positions = [html.index(step, after_token) for step in UPSTREAM_HTML_STEPS[locale]]
    assert positions == sorted(positions)


@pytest.mark.parametrize("locale", ["en", "de"])
def test_upstream_mail_has_no_code_no_choice_and_no_password(locale: Locale) -> None:
    mail = render("mas-upstream", locale, upstream_provider="Authentik")
    assert TOKEN not in mail.subject
    for part in (mail.text, visible(mail.html)):
        assert TOKEN in part
        assert "It opens Element" not in part
        assert "Öffnet die Registrierung von Element" not in part
        # No password to choose: neither MAS's nor Element's password step.
        assert "Choose a username and" not in part
        assert "and a password" not in part
        assert "ein Passwort ein" not in part
        # MAS sends no code on this path and shows no button to choose.
        assert "6-digit" not in part
        assert "6-stellig" not in part
        assert "Continue with Authentik" not in part
        assert "Weiter mit Authentik" not in part
        assert "organisation gave you" not in part


def render_for_ada(locale: Locale, **shape: object) -> RenderedMail:
    """Ada's mail from Alice Admin, following Authentik's steps, in `shape`'s sign-up."""
    return MailRenderer().render(
        MailContext.model_validate(
            {
                "email": "ada@example.org",
                "token": SecretStr(TOKEN),
                "registration_url": ELEMENT,
                "inviter": "Alice Admin",
                "server_name": "example.org",
                "locale": locale,
                "upstream_provider": "Authentik",
                **shape,
            }
        )
    )


@pytest.mark.parametrize("locale", ["en", "de"])
def test_an_enrollment_link_is_the_first_step(locale: Locale) -> None:
    link = "https://id.example.org/if/flow/matrix-invitation/?itoken=0a1b2c"
    mail = render_for_ada(locale, sign_up="mas-upstream", enrollment_url=link)
    # The enrollment step (enrollment.txt, i22-authentik's) comes first, then the token, then
    # the same five steps, the login now with the account just created.
    token_at = mail.text.index(TOKEN)
    assert mail.text.index(link) < token_at < mail.text.index("\n1. ", token_at)
    assert mail.text.count(link) == 1
    steps = upstream_steps(mail.text)
    assert len(steps) == 5
    created = "just created" if locale == "en" else "gerade\n   angelegt haben"
    assert created in steps[1]
    assert "Ask Alice Admin" not in mail.text
    assert "Bitten Sie zuerst Alice Admin" not in mail.text
    assert mail.html.count(f'href="{link.replace("&", "&amp;")}"') == 2  # button and link


@pytest.mark.parametrize("locale", ["en", "de"])
def test_upstream_provider_name_is_escaped_in_html(locale: Locale) -> None:
    mail = render("mas-upstream", locale, upstream_provider="Corp <SSO> & Co")
    assert "Corp <SSO> & Co" in mail.text  # plain text needs no escaping
    assert "<SSO>" not in mail.html
    # "No account for ... yet?" (enrollment.html), the login steps, the link page's heading,
    # "Use", and the closing note
    assert mail.html.count("Corp &lt;SSO&gt; &amp; Co") == 6


@pytest.mark.parametrize(
    ("locale", "login", "fallback"),
    [
        (
            "en",
            "straight to the login at your organisation;",
            "you always log in at your organisation.",
        ),
        ("de", "direkt zur Anmeldung bei Ihrer Organisation;", "immer bei Ihrer Organisation an."),
    ],
)
def test_upstream_without_a_provider_name_describes_the_login(
    locale: Locale, login: str, fallback: str
) -> None:
    mail = render("mas-upstream", locale)
    text = " ".join(mail.text.split())
    assert login in text
    assert fallback in text
    assert "None" not in text
    assert TOKEN in mail.text
    assert mail.html.count("<li") == 6


@pytest.mark.parametrize(
    ("locale", "buttons", "choose"),
    [
        (
            "en",
            ['- "Continue with email address"', '- "Continue with Authentik"'],
            'Choose "Continue with Authentik".',
        ),
        (
            "de",
            ["- „Mit E-Mail-Adresse fortfahren“", "- „Weiter mit Authentik“"],
            "Wählen Sie „Weiter mit Authentik“.",
        ),
    ],
)
def test_mas_s_page_of_buttons_is_listed_as_mas_renders_it(
    locale: Locale, buttons: list[str], choose: str
) -> None:
    mail = render_for_ada(
        locale,
        sign_up="mas-choice",
        provider_buttons=("Authentik", "GitHub"),
        password_button=True,
    )
    positions = [mail.text.index(line) for line in [*buttons, choose]]
    assert positions == sorted(positions)
    assert mail.text.count("GitHub") == 1  # a button, not a step
    code = "6-digit" if locale == "en" else "6-stellig"
    assert mail.text.count(code) == 1  # only in the note on the password button


@pytest.mark.parametrize("provider", ["Auth\nentik", "x" * 101])
def test_the_upstream_provider_name_is_one_bounded_line(provider: str) -> None:
    values: dict[str, object] = {
        "email": "a@example.org",
        "token": SecretStr(TOKEN),
        "registration_url": ELEMENT,
        "inviter": "x",
        "server_name": "example.org",
        "sign_up": "mas-upstream",
    }
    with pytest.raises(ValueError, match="upstream_provider"):
        MailContext.model_validate({**values, "upstream_provider": provider})
    with pytest.raises(ValueError, match="mas_upstream_provider_name"):
        Settings(mas_upstream_provider_name=provider)


def test_upstream_settings_defaults_and_blank_provider() -> None:
    settings = Settings()
    assert settings.mas_sign_up is None  # what MAS's site-config says
    assert Settings(mas_sign_up="").mas_sign_up is None
    assert settings.mas_upstream_provider_name is None
    assert Settings(mas_upstream_provider_name="  ").mas_upstream_provider_name is None
    assert Settings(mas_upstream_provider_name=" Authentik ").mas_upstream_provider_name == (
        "Authentik"
    )
    with pytest.raises(ValueError, match="mas_sign_up"):
        Settings(mas_sign_up="oidc")


@pytest.mark.parametrize(
    "broken",
    [
        '{% if sign_up == "mas-upstream" %}{{ no_such_variable }}{% endif %}',
        '{% if sign_up == "mas-upstream" and not upstream_provider %}{{ no_such_variable }}'
        "{% endif %}",
        '{% if sign_up == "mas-choice" and password_button %}{{ no_such_variable }}{% endif %}',
    ],
)
def test_the_startup_check_renders_the_upstream_branches(tmp_path: Path, broken: str) -> None:
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "body.txt").write_text("{{ token }}" + broken)
    with pytest.raises(ConfigurationError, match="no_such_variable"):
        MailRenderer(tmp_path).check()


def test_with_authentik_the_startup_check_renders_the_enrollment_branches(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "body.txt").write_text(
        '{{ token }}{{ enrollment_url or "" }}{% if enrollment %}{{ no_such_variable }}{% endif %}'
    )
    MailRenderer(tmp_path).check()  # no Authentik: no enrollment link, the branch never runs
    with pytest.raises(ConfigurationError, match="no_such_variable"):
        MailRenderer(tmp_path).check(enrollment=True)


if __name__ == "__main__":
    write_fixtures()
