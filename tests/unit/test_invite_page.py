"""The invite page without a browser: what the page server answers (headers above all), the
page's steps being the mail's own, the link the mail carries, the MAS version check and the
language choice. The browser's side is tests/browser/test_invite_page.py."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.invite_page import build_invite_page, invite_link, prefills_token
from matrix_invite_operator.invite_page.page import negotiate_locale
from matrix_invite_operator.invite_page.server import InvitePageServer, make_server, serve_in_thread
from matrix_invite_operator.mail import Locale, MailContext, MailRenderer
from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.runtime import build_mailer
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

from tests.operator_process import free_port

TOKEN = "Zq7Rk2Lm9Xw4Pb8Tn3Vc6Hd1"
REGISTER = "https://auth.example.org/register"


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"server_name": "example.org", "registration_url": REGISTER}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[InvitePageServer]:
    running = make_server(build_invite_page(settings()), "127.0.0.1", 0)
    serve_in_thread(running)
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()


def get(
    server: InvitePageServer, path: str, method: str = "GET", **headers: str
) -> tuple[http.client.HTTPResponse, bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), port, timeout=5)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def csp_directives(value: str) -> dict[str, list[str]]:
    return {
        name: rest for name, *rest in (part.split() for part in value.split(";") if part.strip())
    }


@pytest.mark.parametrize("path", ["/", "/en/", "/de/", "/static/invite.js", "/static/invite.css"])
def test_every_answer_has_a_csp_without_inline_script_and_no_referrer(
    server: InvitePageServer, path: str
) -> None:
    response, body = get(server, path)
    assert response.status == 200
    assert body
    csp = csp_directives(response.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no 'unsafe-inline', no nonce, no hash
    assert not [v for values in csp.values() for v in values if "unsafe" in v]
    assert csp["connect-src"] == ["'none'"]  # the script can send nothing anywhere
    assert csp["frame-ancestors"] == ["'none'"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Python" not in response.headers["Server"]


@pytest.mark.parametrize("path", ["/", "/en/", "/de/"])
def test_pages_whose_url_carries_the_token_are_never_cached(
    server: InvitePageServer, path: str
) -> None:
    response, body = get(server, path)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    # No inline script at all: the page's one script is a file of its own.
    assert re.findall(rb"<script[^>]*>", body) == [b'<script src="/static/invite.js" defer>']
    assert not re.search(rb"<[^>]+\son[a-z]+\s*=", body)  # no inline event handlers


def test_static_files_may_be_cached_they_carry_no_token(server: InvitePageServer) -> None:
    response, _ = get(server, "/static/invite.js")
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=3600"


def test_the_root_answers_in_the_browsers_language(server: InvitePageServer) -> None:
    response, body = get(server, "/", **{"Accept-Language": "de-AT,de;q=0.9,en;q=0.5"})
    assert response.headers["Content-Language"] == "de"
    assert response.headers["Vary"] == "Accept-Language"
    assert b'<html lang="de">' in body


def test_anything_else_is_not_found_and_only_get_and_head_are_allowed(
    server: InvitePageServer,
) -> None:
    for path in ("/fr/", "/static/../page.py", "/static/", "/en", "/favicon.ico"):
        response, _ = get(server, path)
        assert response.status == 404, path
        assert response.headers["Referrer-Policy"] == "no-referrer"
    response, body = get(server, "/en/", method="HEAD")
    assert response.status == 200
    assert body == b""
    response, _ = get(server, "/en/", method="POST")
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"
    response, body = get(server, "/healthz")
    assert (response.status, body) == (200, b"ok\n")


def visible_text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"invite_page_email_code": False, "invite_page_captcha": True},
        {"mas_sign_up": "upstream", "mas_upstream_provider_name": "Authentik"},
        {"element_web_url": "https://chat.example.org"},
    ],
    ids=["password", "no-code-captcha", "upstream", "element-web"],
)
def test_the_pages_steps_are_the_mails_steps(locale: Locale, overrides: dict[str, object]) -> None:
    configured = settings(**overrides)
    page = build_invite_page(configured).pages[locale].decode()
    page_steps = visible_text(page.split('<div class="steps">')[1].split("</div>")[0])
    mail = MailRenderer().render(
        MailContext(
            email="ada@example.org",
            token=SecretStr(TOKEN),
            registration_url=REGISTER,
            expires_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
            inviter="Alice",
            server_name="example.org",
            locale=locale,
            sign_up="mas-upstream" if configured.mas_sign_up == "upstream" else "mas-password",
            upstream_provider=configured.mas_upstream_provider_name,
            email_code=configured.invite_page_email_code,
            captcha=configured.invite_page_captcha,
            element_web_url=str(configured.element_web_url) if configured.element_web_url else None,
        )
    )
    mail_text = visible_text(mail.html)
    assert len(page_steps) > 200
    assert page_steps in mail_text  # word for word, in one piece
    assert "style=" not in page.split('<div class="steps">')[1]


def test_an_admins_mail_template_changes_the_page_too(tmp_path: Path) -> None:
    directory = tmp_path / "en"
    directory.mkdir()
    (directory / "body.html").write_text(
        "{{ token }}{% block sign_up_steps %}<ol><li>Ask {{ server_name }}'s admin.</li></ol>"
        "{% endblock %}",
        encoding="utf-8",
    )
    page = build_invite_page(settings(mail_template_dir=directory.parent))
    assert "<ol><li>Ask example.org's admin.</li></ol>" in page.pages["en"].decode()
    assert "Registrierungstoken" in page.pages["de"].decode()  # German: the built-in steps


def test_the_page_needs_a_server_name_and_a_plain_registration_url() -> None:
    with pytest.raises(ConfigurationError, match="MATRIX_INVITE_SERVER_NAME"):
        build_invite_page(Settings(registration_url=REGISTER))
    with pytest.raises(ConfigurationError, match="plain sign-up URL"):
        build_invite_page(settings(registration_url=REGISTER + "?token={token}"))


def test_the_mails_link_carries_the_token_only_in_the_fragment() -> None:
    link = invite_link("https://invite.example.org/", "de", SecretStr("a b/c+d#e"))
    assert link == "https://invite.example.org/de/#a%20b%2Fc%2Bd%23e"
    before_fragment = link.split("#", 1)[0]
    assert "a" not in before_fragment.removeprefix("https://invite.example.org/")


def test_the_version_check_prefills_from_the_first_release_that_can() -> None:
    # No MAS release pre-fills tokens yet (pull request #5971 is open): never by default.
    assert not prefills_token("1.22.0")
    assert not prefills_token(None)
    since = (1, 30, 0)
    assert prefills_token("1.30.0", since)
    assert prefills_token("v1.31.2", since)
    assert not prefills_token("1.29.9", since)
    assert not prefills_token("main-abc123", since)
    assert build_invite_page(settings()).pages["en"].count(b'data-prefill="false"') == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("de", "de"),
        ("fr-FR,de;q=0.8,en;q=0.9", "en"),
        ("fr, de-CH;q=0.5", "de"),
        ("en;q=0, de;q=0.1", "de"),
        ("x;q=oops, fr", "en"),
    ],
)
def test_language_negotiation(header: str | None, expected: Locale) -> None:
    assert negotiate_locale(header, "en") == expected


def test_the_mail_leads_with_the_invite_link_and_keeps_token_and_steps() -> None:
    link = invite_link("https://invite.example.org", "en", SecretStr(TOKEN))
    context = MailContext(
        email="ada@example.org",
        token=SecretStr(TOKEN),
        registration_url=REGISTER,
        inviter="Alice",
        server_name="example.org",
        invite_url=link,
    )
    mail = MailRenderer().render(context)
    without = MailRenderer().render(context.model_copy(update={"invite_url": None}))
    hrefs = re.findall(r'href="([^"]+)"', mail.html)
    assert hrefs[0] == link  # the main call to action comes first
    assert "Accept the invitation" in visible_text(mail.html)
    assert mail.text.index(link) < mail.text.index(TOKEN)
    assert TOKEN in mail.text
    assert REGISTER in mail.text
    assert "How to sign up" in mail.text
    assert link not in without.text
    assert link not in without.html
    assert "Accept the invitation" not in without.html


def test_serve_invite_page_runs_without_any_credential(tmp_path: Path) -> None:
    """The real subcommand, as the chart starts it: no MAS client, no SMTP password, no files."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MATRIX_INVITE_BIND_ADDRESS": "127.0.0.1",
        "MATRIX_INVITE_INVITE_PAGE_PORT": str(port),
        "MATRIX_INVITE_SERVER_NAME": "example.org",
        "MATRIX_INVITE_REGISTRATION_URL": REGISTER,
        "MATRIX_INVITE_DEFAULT_LOCALE": "de",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "matrix_invite_operator", "serve-invite-page"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    body = answer.read()
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        assert b'<html lang="de">' in body  # no Accept-Language: the default locale
        assert answer.headers["Referrer-Policy"] == "no-referrer"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert b"Traceback" not in output


def test_the_mailer_links_to_the_page_in_the_invitees_language_only_when_enabled() -> None:
    state = TokenState(id="01J", token=SecretStr(TOKEN), valid=True, usage_limit=1, times_used=0)
    german = Invitation(
        namespace="ns",
        name="joerg",
        uid="uid",
        generation=1,
        created=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
        spec=InvitationSpec(email="joerg@example.org", locale="de"),
        status=InvitationStatus(),
    )
    enabled = settings(invite_page_url="https://invite.example.org")
    context = build_mailer(enabled).context_for(german, token=SecretStr(TOKEN), token_state=state)
    assert context.invite_url == f"https://invite.example.org/de/#{TOKEN}"
    mail = MailRenderer().render(context)
    assert "Einladung annehmen" in mail.html
    assert mail.text.index(context.invite_url) < mail.text.index(f"\n{TOKEN}\n")

    disabled = build_mailer(settings()).context_for(
        german, token=SecretStr(TOKEN), token_state=state
    )
    assert disabled.invite_url is None
