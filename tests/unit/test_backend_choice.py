"""Choosing the token backend: settings checked per backend, one place that builds it."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import get_args

import pytest
from matrix_invite_operator.backends.mas import MasAccounts, MasTokenBackend
from matrix_invite_operator.backends.synapse import (
    AdminTokenSessions,
    SynapseAccounts,
    SynapseTokenBackend,
)
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.providers import KINDS, build_provider
from matrix_invite_operator.settings import Settings
from pydantic import SecretStr

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_mas_stays_the_default() -> None:
    assert Settings().backend == "mas"


def test_synapse_needs_its_url_and_admin_token_but_nothing_of_mas() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(backend="synapse").require_backend()
    message = str(raised.value)
    assert "MATRIX_INVITE_SYNAPSE_URL" in message
    assert "MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE" in message
    assert "MAS" not in message

    Settings(
        backend="synapse", synapse_url="http://synapse:8008", synapse_admin_token=SecretStr("t")
    ).require_backend()


def test_the_admin_token_file_is_read_and_wins(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("syt_from_the_file\n")
    settings = Settings(
        backend="synapse",
        synapse_url="http://synapse:8008",
        synapse_admin_token=SecretStr("stale"),
        synapse_admin_token_file=path,
    )
    settings.require_backend()
    assert settings.synapse_admin_token_value().get_secret_value() == "syt_from_the_file"


def test_an_unreadable_admin_token_file_fails_at_startup(tmp_path: Path) -> None:
    settings = Settings(
        backend="synapse",
        synapse_url="http://synapse:8008",
        synapse_admin_token_file=tmp_path / "missing",
    )
    with pytest.raises(ConfigurationError, match="Synapse admin access token"):
        settings.require_backend()


def test_mas_settings_are_still_required_for_mas() -> None:
    with pytest.raises(ConfigurationError, match="the MAS backend needs"):
        Settings(synapse_url="http://synapse:8008").require_backend()


async def test_the_provider_is_the_configured_backends() -> None:
    synapse = build_provider(
        Settings(
            backend="synapse",
            synapse_url="http://synapse:8008",
            synapse_admin_token=SecretStr("t"),
        )
    )
    try:
        assert isinstance(synapse.backend, SynapseTokenBackend)
        assert isinstance(synapse.accounts, SynapseAccounts)
        assert isinstance(synapse.sessions, AdminTokenSessions)
        assert synapse.backend.name == synapse.name == "Synapse"
    finally:
        await synapse.aclose()
    mas = build_provider(
        Settings(
            mas_url="http://mas:8081",
            mas_client_id="01J44RKQYM4G3TNVANTMTDYTX6",
            mas_client_secret=SecretStr("s"),
        )
    )
    try:
        assert isinstance(mas.backend, MasTokenBackend)
        assert isinstance(mas.accounts, MasAccounts)
        assert mas.sessions is None, "no onboarding user: MAS cannot act in Matrix"
        assert mas.backend.name == mas.name == "MAS"
    finally:
        await mas.aclose()


async def test_settings_that_cannot_reach_the_backend_give_a_provider_that_says_so() -> None:
    provider = build_provider(Settings(backend="synapse"))
    with pytest.raises(ConfigurationError, match="MATRIX_INVITE_SYNAPSE_URL"):
        await provider.backend.read("syn-0")
    with pytest.raises(ConfigurationError, match="MATRIX_INVITE_SYNAPSE_URL"):
        await provider.accounts.find_account("a@example.org", used_at=None, not_before=NOW)
    assert provider.sessions is None
    await provider.aclose()


def test_every_backend_the_settings_accept_has_a_provider() -> None:
    accepted = set(get_args(Settings.model_fields["backend"].annotation))
    assert set(KINDS) == accepted
    where = {name: kind.url(Settings(mas_url="http://mas:8081")) for name, kind in KINDS.items()}
    assert str(where["mas"]) == "http://mas:8081/"
    assert where["synapse"] is None


def test_no_module_outside_the_settings_compares_the_backend_choice() -> None:
    # Adding a backend touches its backends/ and providers/ modules, KINDS and its settings:
    # doctor, sign-up, render-mail and the invite page ask the provider kind, never the name.
    package = Path(__file__).resolve().parents[2] / "operator" / "matrix_invite_operator"
    comparing = re.compile(r"\bbackend\s*(==|!=|\bin\b)")
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "settings.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if comparing.search(line)
    ]
    assert found == []
