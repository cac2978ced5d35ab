"""What the mail says about sign-up: the settings win, MAS's site-config and providers fill in."""

from __future__ import annotations

import asyncio
import threading

import pytest
from matrix_invite_operator.backends.mas import SiteConfig, UpstreamProvider
from matrix_invite_operator.errors import TransientError
from matrix_invite_operator.providers import KINDS
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.sign_up import SiteWatch, facts_from

SITE = SiteConfig(
    server_name="example.org",
    password_registration_enabled=True,
    password_registration_email_required=True,
    password_registration_token_required=True,
    registration_token_required=False,
    captcha_enabled=False,
)


def provider(name: str, *, gated: bool) -> UpstreamProvider:
    return UpstreamProvider.model_validate(
        {
            "id": "01J44RKQYM4G3TNVANTMTDYTX6",
            "attributes": {"human_name": name, "registration_token_required": gated},
        }
    )


def test_without_mas_the_settings_alone_decide() -> None:
    facts = facts_from(Settings())
    assert (facts.sign_up, facts.server_name, facts.email_code, facts.unprotected) == (
        "mas-password",
        None,
        True,
        None,
    )
    with pytest.raises(TransientError, match="MATRIX_INVITE_SERVER_NAME"):
        facts.require_server_name()


def test_mas_fills_in_what_the_settings_leave_open() -> None:
    site = SITE.model_copy(
        update={"server_name": "chat.example.com", "password_registration_email_required": False}
    )
    facts = facts_from(Settings(), site)
    assert (facts.sign_up, facts.server_name, facts.email_code, facts.captcha) == (
        "mas-password",
        "chat.example.com",
        False,
        False,
    )
    assert facts_from(Settings(server_name="example.org"), site).server_name == "example.org"


def test_upstream_only_mas_means_upstream_sign_up_with_its_only_provider_s_name() -> None:
    site = SITE.model_copy(update={"password_registration_enabled": False})
    facts = facts_from(Settings(), site, [provider("Authentik", gated=True)])
    assert (facts.sign_up, facts.upstream_provider, facts.unprotected) == (
        "mas-upstream",
        "Authentik",
        None,
    )
    two = facts_from(Settings(), site, [provider("A", gated=True), provider("B", gated=True)])
    assert two.upstream_provider is None  # which one the invitee uses is not ours to guess
    named = facts_from(
        Settings(mas_upstream_provider_name="Corp SSO", mas_sign_up="password"), site
    )
    assert (named.sign_up, named.upstream_provider) == ("mas-password", "Corp SSO")


def test_registration_without_a_token_is_reported_with_every_open_door() -> None:
    site = SITE.model_copy(update={"password_registration_token_required": False})
    facts = facts_from(Settings(), site, [provider("GitHub", gated=False)])
    assert facts.unprotected == (
        "MAS lets anyone sign up with a password without a registration token (set "
        "account.password_registration_token_required: true); upstream provider GitHub lets "
        "anyone with an account there sign up without a token (set "
        "registration_token_required: true on it): invitations protect nothing. Run "
        "`matrix-invite-operator doctor`"
    )
    old_key = site.model_copy(update={"registration_token_required": True})
    assert facts_from(Settings(), old_key).unprotected is None  # MAS <= 1.18's key counts too


def test_synapse_needs_its_server_name_set() -> None:
    facts = KINDS["synapse"].sign_up_facts(Settings(backend="synapse", server_name="example.org"))
    assert (facts.sign_up, facts.server_name) == ("synapse", "example.org")


def test_a_watch_without_mas_returns_at_once_instead_of_spinning() -> None:
    # A loop that never awaits would freeze the operator's event loop (probes, handlers); run
    # it in a thread of its own, so that such a bug fails this test instead of hanging it.
    settings = Settings(backend="synapse", server_name="example.org")
    watch = SiteWatch(settings, None, KINDS["synapse"].sign_up_facts(settings))
    runner = threading.Thread(
        target=asyncio.run, args=(watch.run_forever(interval=3600),), daemon=True
    )
    runner.start()
    runner.join(timeout=2)
    assert not runner.is_alive(), "run_forever spins (or waits) without MAS to read"
    assert watch.facts.sign_up == "synapse"
    assert not watch.read_once


# --- the shape MAS's /register shows (crates/handlers/src/views/register/mod.rs, v1.22.0) ------


def named(name: str | None, *, issuer: str | None = None) -> UpstreamProvider:
    return UpstreamProvider.model_validate(
        {
            "id": "01J44RKQYM4G3TNVANTMTDYTX6",
            "attributes": {
                "human_name": name,
                "issuer": issuer,
                "registration_token_required": True,
            },
        }
    )


@pytest.mark.parametrize(
    ("password", "providers", "setting", "expected"),
    [
        # password registration only: /register redirects to the password form
        (True, [], None, ("mas-password", (), False)),
        # passwords off, one provider: straight to the provider, no page, no button
        (False, ["Authentik"], None, ("mas-upstream", (), False)),
        # passwords off, two providers: MAS's page with a button each
        (False, ["Authentik", "GitHub"], None, ("mas-choice", ("Authentik", "GitHub"), False)),
        # password and a provider: the page with the password button first
        (True, ["Authentik"], None, ("mas-choice", ("Authentik",), True)),
        # the settings choose the path; the page stays what MAS shows
        (True, ["Authentik"], "password", ("mas-password", ("Authentik",), True)),
        (False, ["Authentik"], "upstream", ("mas-upstream", (), False)),
        (True, [], "upstream", ("mas-upstream", (), False)),
    ],
)
def test_the_shape_is_what_mas_s_register_page_does(
    password: bool, providers: list[str], setting: str | None, expected: tuple[object, ...]
) -> None:
    site = SITE.model_copy(update={"password_registration_enabled": password})
    facts = facts_from(Settings(mas_sign_up=setting), site, [named(n) for n in providers])
    assert (facts.sign_up, facts.provider_buttons, facts.password_button) == expected
    listed = ", ".join(providers) or "none"
    state = "on" if password else "off"
    assert facts.source == (
        f"MAS: password registration {state}, enabled upstream providers: {listed}"
    )


def test_a_button_without_a_name_shows_the_issuer_as_mas_does() -> None:
    site = SITE.model_copy(update={"password_registration_enabled": False})
    providers = [
        named(None, issuer="https://id.example.org/application/o/matrix/?x=1"),
        named(None, issuer="http://id.local/"),
        named(None),
    ]
    facts = facts_from(Settings(), site, providers)
    assert facts.provider_buttons == (
        "id.example.org/application/o/matrix/",
        "http://id.local/",
        "01J44RKQYM4G3TNVANTMTDYTX6",
    )


def test_the_deprecated_global_key_gates_upstream_sign_ups_too() -> None:
    site = SITE.model_copy(
        update={
            "password_registration_enabled": False,
            "password_registration_token_required": False,
            "registration_token_required": True,
        }
    )
    assert facts_from(Settings(), site, [provider("Authentik", gated=False)]).unprotected is None
    open_site = site.model_copy(update={"registration_token_required": False})
    unprotected = facts_from(Settings(), open_site, [provider("Authentik", gated=False)])
    assert unprotected.unprotected is not None
