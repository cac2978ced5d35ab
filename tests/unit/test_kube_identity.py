"""The one Kubernetes identity, in its pure parts: where it comes from (Kopf's precedence),
kubeconfig merging and paths, ExecCredential parsing, renewal rules, and key material that
never touches a file (a missing temp dir proves it: Kopf's own loader fails there)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.handlers import connection_info
from matrix_invite_operator.kube_identity import (
    ExecPlugin,
    KubeIdentity,
    KubeLogin,
    parse_exec_credential,
    tls_context,
)
from pydantic import SecretStr

V1 = "client.authentication.k8s.io/v1"


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tester")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _kubeconfig(path: Path, *, user: dict[str, object], server: str = "https://k:6443") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "ctx",
                "contexts": [
                    {"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}
                ],
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


@pytest.fixture
def no_tempdir(tmp_path: Path) -> Iterator[Path]:
    """A temp dir that does not exist, for everything that asks `tempfile`: a temp file fails."""
    directory = tmp_path / "no-tmp"
    saved = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield directory
    finally:
        tempfile.tempdir = saved


# --- precedence: Kopf's (service account over $KUBECONFIG over ~/.kube/config) ---


def _service_account(directory: Path, token: str) -> Path:
    directory.mkdir()
    (directory / "token").write_text(token + "\n")
    (directory / "namespace").write_text("ess")
    return directory


async def test_the_service_account_wins_over_kubeconfig_as_in_kopf(tmp_path: Path) -> None:
    sa = _service_account(tmp_path / "sa", "sa-token")
    config = _kubeconfig(tmp_path / "config", user={"token": "kubeconfig-token"})
    environ = {
        "KUBECONFIG": str(config),
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    identity = await KubeLogin(service_account_dir=sa, environ=environ).identity()
    assert identity.server == "https://10.0.0.1:443"
    assert identity.token is not None
    assert identity.token.get_secret_value() == "sa-token"
    assert identity.default_namespace == "ess"


async def test_kubeconfig_env_wins_over_the_home_config(tmp_path: Path) -> None:
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    _kubeconfig(tmp_path / "home" / ".kube" / "config", user={"token": "home"}, server="https://h")
    env_config = _kubeconfig(tmp_path / "env", user={"token": "env"}, server="https://e")
    login = KubeLogin(
        service_account_dir=tmp_path / "no-sa",
        environ={"KUBECONFIG": str(env_config), "HOME": str(tmp_path / "home")},
    )
    assert (await login.identity()).server == "https://e"
    home_only = KubeLogin(
        service_account_dir=tmp_path / "no-sa", environ={"HOME": str(tmp_path / "home")}
    )
    assert (await home_only.identity()).server == "https://h"


async def test_no_credentials_at_all_is_one_clear_sentence(tmp_path: Path) -> None:
    login = KubeLogin(service_account_dir=tmp_path / "no-sa", environ={"HOME": str(tmp_path)})
    with pytest.raises(ConfigurationError, match="no kubeconfig at"):
        await login.identity()


async def test_kubeconfig_list_merges_first_name_wins_paths_relative_to_their_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "token").write_text("from-token-file\n")
    first = tmp_path / "a" / "config"
    first.write_text(
        yaml.safe_dump(
            {
                "current-context": "ctx",
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": "https://first"}}],
            }
        )
    )
    second = tmp_path / "b" / "config"
    second.write_text(
        yaml.safe_dump(
            {
                "current-context": "other",
                "clusters": [{"name": "c", "cluster": {"server": "https://second"}}],
                "users": [{"name": "u", "user": {"tokenFile": "token"}}],
            }
        )
    )
    environ = {"KUBECONFIG": os.pathsep.join([str(first), str(tmp_path / "missing"), str(second)])}
    identity = await KubeLogin(service_account_dir=tmp_path / "no-sa", environ=environ).identity()
    assert identity.server == "https://first"
    assert identity.token is not None
    assert identity.token.get_secret_value() == "from-token-file"


async def test_basic_auth_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "c", user={"username": "a", "password": "b"})
    with pytest.raises(ConfigurationError, match=r"since 1\.19"):
        await KubeLogin(kubeconfig=config).identity()


# --- ExecCredential ---


def _credential(**status: object) -> bytes:
    return json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": status}).encode()


def test_exec_credential_token_and_expiry() -> None:
    parsed = parse_exec_credential(
        _credential(token="t0k3n", expirationTimestamp="2030-01-02T03:04:05Z"), V1, what="p"
    )
    assert parsed.token is not None
    assert parsed.token.get_secret_value() == "t0k3n"
    assert parsed.expires_at == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (b"t0k3n-not-json", "not JSON"),
        (_credential(), "neither a token nor"),
        (_credential(clientCertificateData="only-a-cert-t0k3n"), "neither a token nor"),
        (
            json.dumps(
                {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential"}
            ).encode(),
            "apiVersion is not",
        ),
        (_credential(token="t0k3n", expirationTimestamp="tomorrow"), "not RFC 3339"),
    ],
)
def test_a_bad_exec_credential_is_named_without_quoting_it(output: bytes, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as raised:
        parse_exec_credential(output, V1, what="plugin")
    assert "t0k3n" not in str(raised.value)


def test_exec_stanza_command_relative_to_kubeconfig_and_cluster_info(tmp_path: Path) -> None:
    plugin = ExecPlugin.from_kubeconfig(
        {
            "apiVersion": V1,
            "command": "bin/get-token",
            "args": ["--x"],
            "env": [{"name": "A", "value": "1"}],
            "provideClusterInfo": True,
            "interactiveMode": "Never",
        },
        tmp_path,
        {"server": "https://k", "certificate-authority-data": "Q0E=", "proxy-url": "http://p"},
    )
    assert plugin.command == str(tmp_path / "bin" / "get-token")
    info = json.loads(plugin.exec_info())
    assert info == {
        "apiVersion": V1,
        "kind": "ExecCredential",
        "spec": {
            "interactive": False,
            "cluster": {"server": "https://k", "certificate-authority-data": "Q0E="},
        },
    }
    on_path = ExecPlugin.from_kubeconfig({"apiVersion": V1, "command": "aws"}, tmp_path, {})
    assert on_path.command == "aws"


@pytest.mark.parametrize(
    ("stanza", "reason"),
    [
        ({"apiVersion": V1}, "no command"),
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}, "supported"),
        ({"apiVersion": V1, "command": "x", "interactiveMode": "Always"}, "needs a terminal"),
    ],
)
def test_exec_stanzas_that_cannot_work(
    stanza: dict[str, object], reason: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        ExecPlugin.from_kubeconfig(stanza, tmp_path, {})


def _plugin_kubeconfig(tmp_path: Path, outputs: list[dict[str, object]]) -> tuple[Path, Path]:
    """A kubeconfig whose exec plugin prints outputs[n] on its n-th call, counting calls."""
    calls = tmp_path / "calls"
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, sys\n"
        f"calls = {str(calls)!r}\n"
        "try:\n    n = len(open(calls).read().splitlines())\nexcept FileNotFoundError:\n    n = 0\n"
        "open(calls, 'a').write('call\\n')\n"
        f"outputs = {json.dumps(outputs)}\n"
        "status = outputs[min(n, len(outputs) - 1)]\n"
        "print(json.dumps({'apiVersion': " + repr(V1) + ", 'kind': 'ExecCredential', "
        "'status': status}))\n"
    )
    config = _kubeconfig(
        tmp_path / "config",
        user={"exec": {"apiVersion": V1, "command": sys.executable, "args": [str(script)]}},
    )
    return config, calls


def _calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_an_exec_credential_is_kept_until_it_expires_then_renewed(tmp_path: Path) -> None:
    expiry = "2030-01-01T00:00:00Z"
    config, calls = _plugin_kubeconfig(
        tmp_path, [{"token": "first", "expirationTimestamp": expiry}, {"token": "second"}]
    )
    now = [dt.datetime(2029, 12, 31, tzinfo=dt.UTC)]
    login = KubeLogin(kubeconfig=config, clock=lambda: now[0])
    first = await login.identity()
    assert await login.identity() is first
    assert _calls(calls) == 1
    now[0] = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    second = await login.identity()
    assert second.token is not None
    assert second.token.get_secret_value() == "second"
    assert _calls(calls) == 2


async def test_renewal_after_a_401_runs_the_plugin_once_for_all_who_saw_it(tmp_path: Path) -> None:
    config, calls = _plugin_kubeconfig(tmp_path, [{"token": "refused"}, {"token": "good"}])
    login = KubeLogin(kubeconfig=config)
    refused = await login.identity()
    renewed = await login.renew(refused)
    assert await login.renew(refused) is renewed  # a second caller with the same 401
    assert renewed.token is not None
    assert renewed.token.get_secret_value() == "good"
    assert _calls(calls) == 2


# --- key material in memory only ---


async def test_client_certificate_data_is_loaded_without_a_temp_file(
    tmp_path: Path, no_tempdir: Path
) -> None:
    cert, key = _self_signed()
    config = _kubeconfig(
        tmp_path / "config",
        user={
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        },
    )
    identity = await KubeLogin(kubeconfig=config).identity()
    assert identity.client_cert_pem == cert
    assert identity.client_key_pem is not None
    assert identity.client_key_pem.get_secret_value() == key
    assert "PRIVATE" not in repr(identity)
    identity.ssl_context()
    info = connection_info(identity)
    assert isinstance(info, kopf.ConnectionInfo)
    assert (info.server, info.certificate_data, info.default_namespace) == (
        "https://k:6443",
        cert,
        "ns",
    )
    info.as_ssl_context()
    # The check can fail: Kopf's own loader needs a temp dir for the same data.
    plain = kopf.ConnectionInfo(server="https://k", certificate_data=cert, private_key_data=key)
    with pytest.raises(FileNotFoundError, match=str(no_tempdir)):
        plain.as_ssl_context()


def test_kopf_gets_the_identity_with_its_expiry(tmp_path: Path) -> None:
    cert, _ = _self_signed()
    expires = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    identity = KubeIdentity(
        server="https://k",
        source="test",
        ca_pem=cert,
        token=SecretStr("t"),
        expires_at=expires,
    )
    info = connection_info(identity, trust_env=True)
    assert (info.token, info.expiration, info.trust_env) == ("t", expires, True)
    assert info.as_http_headers() == {"Authorization": "Bearer t"}
    # Equal identities are equal connection infos: Kopf refuses one it saw refused (a 401).
    assert connection_info(identity, trust_env=True) == info
    tls_context(ca_pem=cert, cert_pem=None, key_pem=None, insecure=False)
