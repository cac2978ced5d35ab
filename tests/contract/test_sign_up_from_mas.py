"""The mail's sign-up steps come from what MAS answers (`site-config` and
`upstream-oauth-providers`), read through the operator's own client, over real sockets from the
MAS double set up as mas/FACTS.md observed a real MAS 1.22 ("What an invitee goes through with an
upstream provider only"): in the operator (`SiteWatch` feeding the mailer) and in `render-mail`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.mail import MailRenderer
from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.providers.mas import mas_admin_client, mas_http_client
from matrix_invite_operator.runtime import build_mailer
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.sign_up import SignUpFacts, SiteWatch
from pydantic import SecretStr

from tests.doubles.mas import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MasDouble
from tests.unit.test_mail_sign_up import UPSTREAM_STEPS, upstream_steps

TOKEN = "Zq7Rk2Lm9Xw4Pb8Tn3Vc6Hd1"


def settings_for(mas: MasDouble, tmp_path: Path, **values: object) -> Settings:
    (tmp_path / "client-secret").write_text(DEFAULT_CLIENT_SECRET)
    return Settings(
        mas_url=mas.url,
        mas_client_id=DEFAULT_CLIENT_ID,
        mas_client_secret_file=tmp_path / "client-secret",
        inviter_name="Alice Admin",
        registration_url=f"{mas.url}/register",
        **values,  # type: ignore[arg-type]
    )


def read_facts(settings: Settings) -> SignUpFacts:
    async def read() -> SignUpFacts:
        async with mas_http_client(settings) as http:
            return await SiteWatch(settings, mas_admin_client(settings, http)).refresh()

    return asyncio.run(read())


def test_the_operator_mails_the_observed_upstream_steps(
    mas_double: MasDouble, tmp_path: Path
) -> None:
    mas_double.configure_upstream_only()
    settings = settings_for(mas_double, tmp_path)
    facts = read_facts(settings)
    assert (facts.sign_up, facts.upstream_provider, facts.provider_buttons) == (
        "mas-upstream",
        "Authentik",
        (),
    )
    assert facts.unprotected is None
    state = TokenState(id="t", token=SecretStr(TOKEN), valid=True, usage_limit=1, times_used=0)
    mailer = build_mailer(settings, sign_up=lambda: facts)
    for locale in ("en", "de"):
        invitation = Invitation(
            namespace="ns",
            name="ada",
            uid="uid",
            generation=1,
            created=dt.datetime(2026, 12, 6, tzinfo=dt.UTC),
            spec=InvitationSpec.model_validate({"email": "ada@example.org", "locale": locale}),
            status=InvitationStatus(),
        )
        ctx = mailer.context_for(invitation, token=SecretStr(TOKEN), token_state=state)
        text = MailRenderer().render(ctx).text
        assert upstream_steps(text) == UPSTREAM_STEPS[locale]


def test_an_ungated_provider_is_reported_as_unprotected(
    mas_double: MasDouble, tmp_path: Path
) -> None:
    mas_double.configure_site(password_registration_enabled=False)
    mas_double.add_upstream_provider("Authentik", registration_token_required=False)
    facts = read_facts(settings_for(mas_double, tmp_path))
    assert facts.unprotected is not None
    assert "upstream provider Authentik lets anyone" in facts.unprotected


def test_several_providers_and_passwords_give_mas_s_page_of_buttons(
    mas_double: MasDouble, tmp_path: Path
) -> None:
    mas_double.add_upstream_provider("Authentik", registration_token_required=True)
    mas_double.add_upstream_provider(None, registration_token_required=True)
    mas_double.add_upstream_provider("Old", registration_token_required=True, enabled=False)
    facts = read_facts(settings_for(mas_double, tmp_path))
    assert facts.sign_up == "mas-choice"
    assert facts.provider_buttons == ("Authentik", "id.example.org/application/o/matrix/")
    assert facts.password_button
    assert facts.upstream_provider is None  # two to choose from, none named in the settings
    named = read_facts(settings_for(mas_double, tmp_path, mas_upstream_provider_name="Authentik"))
    assert named.upstream_provider == "Authentik"
    password = read_facts(settings_for(mas_double, tmp_path, mas_sign_up="password"))
    assert (password.sign_up, password.password_button) == ("mas-password", True)


def render_mail(mas_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "client-secret").write_text(DEFAULT_CLIENT_SECRET)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_INVITE_")}
    settings = {
        "MATRIX_INVITE_MAS_URL": mas_url,
        "MATRIX_INVITE_MAS_CLIENT_ID": DEFAULT_CLIENT_ID,
        "MATRIX_INVITE_MAS_CLIENT_SECRET_FILE": str(tmp_path / "client-secret"),
        "MATRIX_INVITE_INVITER_NAME": "Alice Admin",
        "MATRIX_INVITE_HTTP_TIMEOUT_SECONDS": "5",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "matrix_invite_operator",
            "render-mail",
            "--email",
            "ada@example.org",
            "--token",
            TOKEN,
            *args,
        ],
        cwd=tmp_path,
        env={**clean, **settings},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert DEFAULT_CLIENT_SECRET not in result.stdout + result.stderr
    return result


def test_render_mail_asks_mas_and_says_which_shape_it_used(
    mas_double: MasDouble, tmp_path: Path
) -> None:
    mas_double.configure_upstream_only()
    asked = render_mail(mas_double.url, tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert upstream_steps(asked.stdout) == UPSTREAM_STEPS["en"]
    assert (
        "(sign-up shape: mas-upstream, from MAS: password registration off, enabled upstream "
        "providers: Authentik)"
    ) in asked.stderr.splitlines()
    offline = render_mail(mas_double.url, tmp_path, "--offline")
    assert offline.returncode == 0, offline.stderr
    assert "(sign-up shape: mas-password, from the settings)" in offline.stderr.splitlines()
    assert 'under "Confirm password"' in offline.stdout


def test_render_mail_without_mas_names_the_way_out(tmp_path: Path) -> None:
    with MasDouble() as mas:
        url = mas.url
    result = render_mail(url, tmp_path)  # the double is gone: nothing answers there
    assert result.returncode == 2
    assert result.stdout == ""
    assert "cannot ask MAS how invitees sign up" in result.stderr
    assert "--offline" in result.stderr
    assert "Traceback" not in result.stderr
