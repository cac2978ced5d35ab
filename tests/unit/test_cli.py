"""`matrix-invite-operator render-mail`, run as the admin would: a subprocess, settings from env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOKEN = "ExampleToken0123456789ab"  # the command's documented default


def render_mail(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_INVITE_")}
    return subprocess.run(
        [sys.executable, "-m", "matrix_invite_operator", "render-mail", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def test_german_preview_prints_the_text_part_and_writes_the_html_part(tmp_path: Path) -> None:
    result = render_mail(
        tmp_path, "--locale", "de", "--email", "jörg@example.org", "--display-name", "Jörg"
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Subject: Einladung zum Matrix-Server example.org\n\n")
    assert "Hallo Jörg," in out
    assert "jörg@example.org" in out
    assert TOKEN in out.splitlines()
    assert TOKEN not in out.splitlines()[0]
    assert "https://auth.example.org/register" in out
    assert "Er ist NICHT das Registrierungstoken." in out
    assert " Uhr (UTC)." in out
    assert "<" not in out  # the text part only

    html_path = tmp_path / "invitation.html"
    assert f"HTML part written to {html_path.name}" in result.stderr
    html = html_path.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert 'lang="de"' in html
    assert "Hallo Jörg," in html
    assert f">{TOKEN}</code>" in html


def test_settings_come_from_the_environment_and_smtp_is_never_touched(tmp_path: Path) -> None:
    result = render_mail(
        tmp_path,
        "--email",
        "ada@example.org",
        "--display-name",
        "<script>alert(1)</script>",
        "--token",
        "Tok3nFromTheCommandLine",
        "--usage-limit",
        "3",
        "--html",
        str(tmp_path / "ada.html"),
        MATRIX_INVITE_REGISTRATION_URL="https://chat.example.net/invite?token={token}&to={email}",
        MATRIX_INVITE_SERVER_NAME="example.net",
        MATRIX_INVITE_INVITER_NAME="Grace Hopper",
        MATRIX_INVITE_MAIL_TIMEZONE="Europe/Berlin",
        MATRIX_INVITE_DEFAULT_VALIDITY="48h",
        # A relay that does not exist and a password file that is missing: not needed here.
        MATRIX_INVITE_SMTP_HOST="smtp.invalid",
        MATRIX_INVITE_SMTP_USERNAME="nobody",
        MATRIX_INVITE_SMTP_PASSWORD_FILE=str(tmp_path / "missing"),
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Subject: Invitation to the Matrix server example.net\n")
    assert "Hello <script>alert(1)</script>," in out  # plain text needs no escaping
    assert "Grace Hopper has invited you" in out
    assert (
        "https://chat.example.net/invite?token=Tok3nFromTheCommandLine&to=ada%40example.org" in out
    )
    assert "(Europe/Berlin, UTC+" in out
    assert "up to 3 registrations" in out

    html = (tmp_path / "ada.html").read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert (
        'href="https://chat.example.net/invite?token=Tok3nFromTheCommandLine&amp;to=ada%40example.org"'
        in html
    )


def test_bad_input_ends_with_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    bad_limit = render_mail(tmp_path, "--email", "ada@example.org", "--usage-limit", "0")
    bad_url = render_mail(
        tmp_path, "--email", "ada@example.org", MATRIX_INVITE_REGISTRATION_URL="https://x/{user}"
    )

    assert bad_limit.returncode == 2
    assert bad_limit.stderr.startswith(
        "matrix-invite-operator: cannot render the mail: usage_limit"
    )
    assert bad_url.returncode == 2
    assert "only {token} and {email} are allowed" in bad_url.stderr
    bad_path = render_mail(
        tmp_path, "--email", "ada@example.org", "--html", str(tmp_path / "no" / "such.html")
    )
    assert bad_path.returncode == 2
    assert "cannot write the HTML part to" in bad_path.stderr
    for result in (bad_limit, bad_url, bad_path):
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    assert not (tmp_path / "invitation.html").exists()


def test_sign_up_upstream_previews_the_identity_provider_steps(tmp_path: Path) -> None:
    result = render_mail(
        tmp_path,
        "--email",
        "ada@example.org",
        "--sign-up",
        "upstream",
        MATRIX_INVITE_MAS_UPSTREAM_PROVIDER_NAME="Authentik <SSO>",
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    steps = [
        "1. Open the link above. It takes you straight to the login at Authentik <SSO>;",
        "2. Log in at Authentik <SSO>.",
        '3. Back on the Matrix server, the page "Continue signing up with\n'
        '   your Authentik <SSO> account"',
        '4. On the page "Registration token", paste the token from this',
        '5. Only if the page "Choose your display name" appears',
    ]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions)
    assert TOKEN in out.splitlines()
    assert "Signing up this way, you choose no password" in out
    assert "and a password" not in out
    assert "6-digit" not in out
    html = (tmp_path / "invitation.html").read_text(encoding="utf-8")
    assert "Continue signing up with your Authentik &lt;SSO&gt; account" in html
    assert "<SSO>" not in html
    assert (
        "(sign-up shape: mas-upstream, from the settings (MAS not configured: "
        "MATRIX_INVITE_MAS_URL))"
    ) in result.stderr


def test_sign_up_comes_from_the_settings_and_the_option_overrides_them(tmp_path: Path) -> None:
    upstream = render_mail(
        tmp_path, "--locale", "de", "--email", "a@example.org", MATRIX_INVITE_MAS_SIGN_UP="upstream"
    )
    password = render_mail(
        tmp_path,
        "--email",
        "a@example.org",
        "--sign-up",
        "password",
        MATRIX_INVITE_MAS_SIGN_UP="upstream",
    )
    synapse = render_mail(tmp_path, "--email", "a@example.org", "--sign-up", "synapse")
    default = render_mail(tmp_path, "--email", "a@example.org")

    for result in (upstream, password, synapse, default):
        assert result.returncode == 0, result.stderr
    assert "direkt zur Anmeldung bei Ihrer Organisation;" in " ".join(upstream.stdout.split())
    assert "Auf diesem Weg wählen Sie kein Passwort für" in upstream.stdout
    assert "2. Choose a username and enter your email address and a password, then" in (
        password.stdout
    )

    def steady(out: str) -> list[str]:  # the expiry is counted from now: it may tick over
        return [line for line in out.splitlines() if "expires on" not in line]

    assert steady(password.stdout) == steady(default.stdout)
    assert "It opens Element" in synapse.stdout


def test_an_unknown_sign_up_is_refused(tmp_path: Path) -> None:
    bad_setting = render_mail(tmp_path, "--email", "a@example.org", MATRIX_INVITE_MAS_SIGN_UP="sso")
    bad_option = render_mail(tmp_path, "--email", "a@example.org", "--sign-up", "sso")

    assert bad_setting.returncode == 2
    assert bad_setting.stderr.startswith(
        "matrix-invite-operator: invalid configuration: MATRIX_INVITE_MAS_SIGN_UP:"
    )
    assert bad_option.returncode == 2
    assert "--sign-up: invalid choice: 'sso'" in bad_option.stderr
    for result in (bad_setting, bad_option):
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_the_preview_follows_mas_s_email_verification_and_captcha(tmp_path: Path) -> None:
    plain = render_mail(tmp_path, "--email", "a@example.org", "--no-email-code", "--captcha")
    assert plain.returncode == 0, plain.stderr
    assert "6-digit" not in plain.stdout
    assert "(a CAPTCHA check)" in plain.stdout
    assert "4. Finally, you may enter a display name, or skip this step." in plain.stdout
    web = render_mail(
        tmp_path,
        "--email",
        "a@example.org",
        "--server-name",
        "matrix.example.com",
        MATRIX_INVITE_ELEMENT_WEB_URL="https://chat.example.com",
    )
    assert "- in your browser: https://chat.example.com/" in web.stdout
    assert "provider), enter matrix.example.com." in web.stdout
