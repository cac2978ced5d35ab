"""`matrix-invite-operator doctor`, run as an admin runs it (a subprocess, settings from the
environment) against the MAS double and the SMTP double over real sockets: the healthy report,
and the exact line for every failure an admin meets on a new ESS install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.doubles.mas import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, OAUTH_TOKEN_PATH, MasDouble
from tests.doubles.smtp import SmtpDouble, make_certificates

SMTP_USER = "invitations@example.org"
SMTP_PASSWORD = "smtp-double-password-4711"
SECRETS = (DEFAULT_CLIENT_SECRET, SMTP_PASSWORD, "wrong-client-secret", "wrong-smtp-password")


@pytest.fixture
def smtp() -> Iterator[SmtpDouble]:
    with SmtpDouble(mode="starttls", username=SMTP_USER, password=SMTP_PASSWORD) as double:
        yield double


def doctor(
    tmp_path: Path,
    mas_url: str,
    smtp: SmtpDouble,
    *,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    smtp_password: str = SMTP_PASSWORD,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "client-secret").write_text(client_secret)
    (tmp_path / "smtp-password").write_text(smtp_password)
    host, port = smtp.address
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_INVITE_")}
    settings = {
        "MATRIX_INVITE_MAS_URL": mas_url,
        "MATRIX_INVITE_MAS_CLIENT_ID": DEFAULT_CLIENT_ID,
        "MATRIX_INVITE_MAS_CLIENT_SECRET_FILE": str(tmp_path / "client-secret"),
        "MATRIX_INVITE_SMTP_HOST": host,
        "MATRIX_INVITE_SMTP_PORT": str(port),
        "MATRIX_INVITE_SMTP_USERNAME": SMTP_USER,
        "MATRIX_INVITE_SMTP_PASSWORD_FILE": str(tmp_path / "smtp-password"),
        "MATRIX_INVITE_SMTP_CA_BUNDLE": str(smtp.ca_path),
        "MATRIX_INVITE_SMTP_TIMEOUT_SECONDS": "5",
        "MATRIX_INVITE_HTTP_TIMEOUT_SECONDS": "5",
        "MATRIX_INVITE_REGISTRATION_URL": f"{mas_url}/register",
    }
    result = subprocess.run(
        [sys.executable, "-m", "matrix_invite_operator", "doctor"],
        env={**clean, **settings, **env},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    assert not result.stderr.strip(), result.stderr
    return result


def healthy_lines(mas_url: str, smtp: SmtpDouble) -> list[str]:
    host, port = smtp.address
    return [
        f"OK    settings: backend mas at {mas_url}/, sign-up from MAS, server name from MAS",
        f"OK    reachable: {mas_url} answers (404) (plain HTTP)",
        f"OK    discovery: token endpoint {mas_url}{OAUTH_TOKEN_PATH}",
        f"OK    registration link: {mas_url}/register is on MAS's public host",
        f"OK    token: client {DEFAULT_CLIENT_ID} got an access token with urn:mas:admin "
        "(client_secret_basic)",
        "OK    admin api: MAS 1.22.0 answers /api/admin/v1/version and /site-config",
        "OK    password registration: enabled",
        "OK    registration token: required for password sign-up",
        "OK    email verification: required: MAS mails a 6-digit code, so MAS needs its own email "
        "section (ESS sets none; check with mas-cli config dump)",
        "OK    captcha: off",
        "OK    server name: example.org (from MAS)",
        "OK    token list: readable",
        f"OK    smtp: {host}:{port} with STARTTLS, login as {SMTP_USER} accepted (nothing sent)",
    ]


def test_a_healthy_setup_passes_every_check_and_writes_nothing(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble
) -> None:
    result = doctor(tmp_path, mas_double.url, smtp)
    assert result.stdout.splitlines() == healthy_lines(mas_double.url, smtp)
    assert result.returncode == 0
    assert mas_double.tokens() == []
    assert smtp.messages == []
    assert [ok for _, _, ok in smtp.auth_attempts] == [True]
    user_agents = {r.user_agent for r in mas_double.request_log()}
    assert user_agents == {"matrix-invite-operator"}, "the token endpoint too carries our name"


def test_a_wrong_client_secret_names_the_settings_to_check(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble
) -> None:
    result = doctor(tmp_path, mas_double.url, smtp, client_secret="wrong-client-secret")
    lines = result.stdout.splitlines()
    assert lines[4] == (
        f"FAIL  token: MAS refused the client credentials for client {DEFAULT_CLIENT_ID} "
        "(401 invalid_client). The operator sends the secret from "
        "MATRIX_INVITE_MAS_CLIENT_SECRET_FILE (chart values mas.clientSecret.existingSecret and "
        ".key) byte for byte, by client_secret_basic (MATRIX_INVITE_MAS_CLIENT_AUTH_METHOD); MAS "
        "refuses it when its client with this id (MATRIX_INVITE_MAS_CLIENT_ID, chart value "
        "mas.clientId) has another secret or another client_auth_method. MAS reads its clients "
        "only at start: restart MAS after rotating the secret"
    )
    assert lines[5].startswith("OK    smtp: "), "SMTP is checked even after MAS failed"
    assert len(lines) == 6
    assert result.returncode == 1


def test_a_client_missing_from_admin_clients_gets_mas_s_answer_and_the_fix(
    tmp_path: Path, smtp: SmtpDouble
) -> None:
    with MasDouble(admin_client=False) as mas:
        result = doctor(tmp_path, mas.url, smtp)
    assert result.stdout.splitlines()[4] == (
        f"FAIL  token: MAS will not grant the urn:mas:admin scope to client {DEFAULT_CLIENT_ID} "
        "(403 invalid_scope): the client must be listed in policy.data.admin_clients of the MAS "
        "configuration (on ESS: in the matrixAuthenticationService.additional fragment; restart "
        "MAS after the change)"
    )
    assert result.returncode == 1


class _InternalListener(BaseHTTPRequestHandler):
    """ESS's MAS port 8081: health, metrics and connection info; 404 for everything else."""

    def do_GET(self) -> None:
        status = 200 if self.path == "/health" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def internal_listener() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _InternalListener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_port_that_answers_404_is_named(
    tmp_path: Path, internal_listener: str, smtp: SmtpDouble
) -> None:
    result = doctor(tmp_path, internal_listener, smtp)
    lines = result.stdout.splitlines()
    assert lines[1] == f"OK    reachable: {internal_listener} answers (404) (plain HTTP)"
    assert lines[2] == (
        f"FAIL  discovery: MAS discovery at {internal_listener}/.well-known/openid-configuration "
        "answered 404: check the MAS URL, or configure the token endpoint explicitly. "
        "MATRIX_INVITE_MAS_URL (mas.url) must point at the MAS listener serving discovery and "
        "the Admin API: on ESS port 8080 (8081 serves only health and metrics)"
    )
    assert result.returncode == 1


def test_an_untrusted_certificate_names_the_ca_bundle(tmp_path: Path, smtp: SmtpDouble) -> None:
    certs = make_certificates(tmp_path / "mas-certs", ca_name="Private MAS CA")
    with MasDouble(tls=certs.server_context()) as mas:
        url = mas.url
        result = doctor(tmp_path, url, smtp)
        trusted = doctor(tmp_path, url, smtp, MATRIX_INVITE_MAS_CA_BUNDLE=str(certs.ca_path))
    assert result.stdout.splitlines()[1] == (
        f"FAIL  reachable: {url} presented a TLS certificate we do not trust (unable to get "
        "local issuer certificate): set MATRIX_INVITE_MAS_CA_BUNDLE (chart value "
        "mas.caBundle.configMap) to its CA's PEM, or use the cluster-internal http:// Service "
        "(MATRIX_INVITE_MAS_URL, chart value mas.url; on ESS "
        "http://<release>-matrix-authentication-service.<namespace>.svc.cluster.local:8080; "
        "with networkPolicy.enabled, networkPolicy.mas must allow it)"
    )
    assert result.returncode == 1
    assert f"OK    reachable: {url} answers (404), TLS certificate trusted" in trusted.stdout
    assert trusted.returncode == 0, trusted.stdout


@pytest.mark.parametrize(
    ("version", "key"),
    [
        ("1.22.0", "account.password_registration_token_required: true"),
        (
            "1.18.0",
            "account.registration_token_required: true (MAS 1.18.0 is older than 1.19 and "
            "ignores password_registration_token_required)",
        ),
    ],
)
def test_registration_without_a_token_fails_loudly_with_the_key_for_the_version(
    tmp_path: Path, smtp: SmtpDouble, version: str, key: str
) -> None:
    with MasDouble(version=version) as mas:
        mas.configure_site(password_registration_token_required=False)
        result = doctor(tmp_path, mas.url, smtp)
    assert result.stdout.splitlines()[7] == (
        "FAIL  registration token: NOT REQUIRED: ANYONE CAN SIGN UP, the invitations protect "
        f"nothing. Set {key}, then restart MAS (kubectl rollout restart), which reads its config "
        "only at start"
    )
    assert result.returncode == 1


def test_upstream_sign_up_lists_the_providers_and_warns_about_an_open_one(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble
) -> None:
    mas_double.configure_site(
        password_registration_enabled=False, password_registration_token_required=False
    )
    mas_double.add_upstream_provider("Authentik", registration_token_required=True)
    mas_double.add_upstream_provider("GitHub", registration_token_required=False)
    mas_double.add_upstream_provider("Retired", registration_token_required=False, enabled=False)
    result = doctor(tmp_path, mas_double.url, smtp, MATRIX_INVITE_MAS_SIGN_UP="upstream")
    lines = result.stdout.splitlines()
    assert lines[6:13] == [
        "OK    password registration: off: invitees sign up upstream",
        "SKIP  registration token: no password registration",
        "OK    captcha: off",
        "OK    server name: example.org (from MAS)",
        "OK    upstream providers: token required by Authentik",
        "WARN  upstream providers: GitHub lets anyone with an account there sign up WITHOUT A "
        "TOKEN: set registration_token_required: true in the fragment that already defines that "
        "provider (never in a copy: ESS appends lists), then restart MAS (kubectl rollout "
        "restart), which reads its config only at start",
        "OK    token list: readable",
    ]
    assert result.returncode == 0, "a warning alone does not fail"


def test_a_registration_link_off_mas_s_public_host_is_named(
    tmp_path: Path, smtp: SmtpDouble
) -> None:
    with MasDouble(public_base="https://account.example.org/") as mas:
        url = mas.url
        result = doctor(
            tmp_path,
            url,
            smtp,
            MATRIX_INVITE_MAS_TOKEN_ENDPOINT=f"{url}{OAUTH_TOKEN_PATH}",
            MATRIX_INVITE_REGISTRATION_URL="https://auth.example.org/register",
        )
    lines = result.stdout.splitlines()
    assert lines[2] == f"SKIP  discovery: token endpoint configured: {url}{OAUTH_TOKEN_PATH}"
    assert lines[3] == (
        "WARN  registration link: https://auth.example.org/register is not on MAS's public host "
        "account.example.org: set MATRIX_INVITE_REGISTRATION_URL (invitations.registrationUrl) "
        "to https://account.example.org/register"
    )
    assert result.returncode == 0, result.stdout


def test_a_server_name_mas_does_not_serve_fails(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble
) -> None:
    mas_double.configure_site(server_name="matrix.example.com")
    result = doctor(tmp_path, mas_double.url, smtp, MATRIX_INVITE_SERVER_NAME="example.org")
    assert (
        "FAIL  server name: MAS serves matrix.example.com but the mail names example.org: set "
        "MATRIX_INVITE_SERVER_NAME (invitations.serverName) to matrix.example.com"
    ) in result.stdout.splitlines()
    assert result.returncode == 1


def test_a_refused_smtp_login_names_the_settings(
    tmp_path: Path, mas_double: MasDouble, smtp: SmtpDouble
) -> None:
    result = doctor(tmp_path, mas_double.url, smtp, smtp_password="wrong-smtp-password")
    host, port = smtp.address
    assert result.stdout.splitlines()[-1] == (
        f"FAIL  smtp: SMTP login refused for user {SMTP_USER!r} (SMTP relay {host}:{port}): "
        "535 5.7.8 Authentication credentials invalid (MATRIX_INVITE_SMTP_USERNAME and "
        "MATRIX_INVITE_SMTP_PASSWORD_FILE; chart values smtp.username, "
        "smtp.password.existingSecret and .key)"
    )
    assert result.stdout.splitlines()[:-1] == healthy_lines(mas_double.url, smtp)[:-1]
    assert result.returncode == 1
    assert smtp.messages == []


def test_settings_that_cannot_work_are_the_first_and_only_line(
    tmp_path: Path, smtp: SmtpDouble
) -> None:
    result = doctor(tmp_path, "http://127.0.0.1:9", smtp, MATRIX_INVITE_MAS_CLIENT_ID="")
    assert result.stdout.splitlines() == [
        "FAIL  settings: the MAS backend needs MATRIX_INVITE_MAS_CLIENT_ID"
    ]
    assert result.returncode == 1


def test_the_synapse_backend_checks_settings_and_smtp_only(
    tmp_path: Path, smtp: SmtpDouble
) -> None:
    (tmp_path / "synapse-token").write_text("syt_not_printed_anywhere")
    result = doctor(
        tmp_path,
        "http://127.0.0.1:9",
        smtp,
        MATRIX_INVITE_BACKEND="synapse",
        MATRIX_INVITE_SYNAPSE_URL="http://127.0.0.1:9",
        MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE=str(tmp_path / "synapse-token"),
    )
    lines = result.stdout.splitlines()
    assert lines[1] == "SKIP  backend: synapse: only the settings and SMTP are checked"
    assert lines[2].startswith("OK    smtp: ")
    assert len(lines) == 3
    assert "syt_not_printed_anywhere" not in result.stdout
    assert result.returncode == 0
