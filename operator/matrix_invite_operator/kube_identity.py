"""Our one Kubernetes identity: who we are to the API server, for Kopf and for every call of ours.

`KubeLogin` is the one login function. Kopf gets its result through the `@kopf.on.login`
handler (handlers.py turns a `KubeIdentity` into a `kopf.ConnectionInfo`); our own calls
(`kube.KubeApi`, `kube.KubeEvents`, the Lease in leadership.py) send it through
`KubeTransport`. Both ask the same `KubeLogin`, so a kubeconfig that works for one works for
the other, and a renewal by one is seen by the other.

Why no client library for kubeconfig logins: in a Pod only the service account matters (a
token file and a CA certificate, `service_account_identity`), and no library is needed for it.
Kubeconfigs serve development, tests and out-of-cluster runs. For them, Kopf 1.45's own
kubeconfig login reads no `exec` plugin and no `tokenFile`; the `kubernetes` package's loader
writes certificate and key data to temp files, and kr8s writes them to temp files it never
removes and ignores an exec credential's expiry. Taking one on would put key material on disk
for a path production never takes; the subset kubectl users meet (tokens, `tokenFile`,
certificates, exec plugins) is read here instead, tested against the real API server. Key
material never touches a file system: PEM data is loaded from an anonymous in-memory file
(`memfd_create`), closed as soon as `ssl` has read it.

Where the identity comes from, in Kopf's order (its fallback logins give the service account
the higher priority): the pod's service account when its token file exists, else the
kubeconfig files in `$KUBECONFIG` (merged, the first definition of a name wins), else
`~/.kube/config`. A kubeconfig user may hold a token, a `tokenFile`, client certificate and key
(as files or data), an `auth-provider` access token (as Kopf reads it), or an `exec` plugin
(`client.authentication.k8s.io/v1` or `v1beta1` `ExecCredential`). Files are read again at
each login, so rotated files need no restart. An identity is renewed when it expires (an exec
credential's `expirationTimestamp`) or when the API server answers 401 (`KubeLogin.renew`):
that re-reads a rotated service-account token too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import SecretBytes, SecretStr

from .coalesced_http import coalesced_transport
from .errors import ConfigurationError, KubeUnavailable

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class KubeIdentity:
    """Where the API server is and how we prove who we are: plain data, read into memory."""

    server: str
    source: str  # for messages: "service account", "kubeconfig /path (context x)"
    ca_pem: bytes | None = None
    insecure: bool = False
    token: SecretStr | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: SecretBytes | None = None
    default_namespace: str | None = None
    expires_at: dt.datetime | None = None

    def expired(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return self.expires_at is not None and now >= self.expires_at

    def tls_material(self) -> tuple[object, ...]:
        """What a TLS connection depends on: a change needs new connections."""
        key = self.client_key_pem.get_secret_value() if self.client_key_pem else None
        return (self.ca_pem, self.insecure, self.client_cert_pem, key)

    def ssl_context(self) -> ssl.SSLContext:
        key = self.client_key_pem.get_secret_value() if self.client_key_pem else None
        return tls_context(
            ca_pem=self.ca_pem, cert_pem=self.client_cert_pem, key_pem=key, insecure=self.insecure
        )


def tls_context(
    *, ca_pem: bytes | None, cert_pem: bytes | None, key_pem: bytes | None, insecure: bool
) -> ssl.SSLContext:
    """An SSL context from PEM data in memory; no temp file, not even for a moment."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii") if ca_pem else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_pem and key_pem:
        with (
            _memory_file("kube-client-cert", cert_pem) as cert,
            _memory_file("kube-client-key", key_pem) as key,
        ):
            context.load_cert_chain(cert, key)
    elif cert_pem or key_pem:
        raise ConfigurationError("the kubeconfig user has a client certificate or key, not both")
    return context


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    # `ssl` loads certificate chains from paths only; an anonymous memory file has a path
    # under /proc/self/fd and vanishes with its last descriptor.
    if not hasattr(os, "memfd_create"):
        raise ConfigurationError(
            "client certificate data needs Linux (memfd_create) to stay off the disk"
        )
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


# --- exec plugins (client.authentication.k8s.io ExecCredential) ---


@dataclass(frozen=True)
class ExecCredential:
    token: SecretStr | None
    client_cert_pem: bytes | None
    client_key_pem: SecretBytes | None
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig user's `exec` stanza: a command that prints an ExecCredential."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = EXEC_API_VERSIONS[0]
    provide_cluster_info: bool = False
    cluster: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kubeconfig(
        cls, stanza: Mapping[str, Any], base: Path, cluster: Mapping[str, Any]
    ) -> ExecPlugin:
        command = str(stanza.get("command") or "")
        if not command:
            raise ConfigurationError("the kubeconfig's exec plugin has no command")
        api_version = str(stanza.get("apiVersion") or "")
        if api_version not in EXEC_API_VERSIONS:
            raise ConfigurationError(
                f"the kubeconfig's exec plugin {command} asks for {api_version or 'no'} "
                f"apiVersion; supported: {', '.join(EXEC_API_VERSIONS)}"
            )
        if stanza.get("interactiveMode") == "Always":
            raise ConfigurationError(
                f"the kubeconfig's exec plugin {command} needs a terminal (interactiveMode: "
                "Always); the operator has none"
            )
        # As client-go: a command with a path separator is relative to its kubeconfig.
        if os.sep in command and not os.path.isabs(command):
            command = str(base / command)
        env = tuple((str(e["name"]), str(e["value"])) for e in stanza.get("env") or ())
        return cls(
            command=command,
            args=tuple(str(a) for a in stanza.get("args") or ()),
            env=env,
            api_version=api_version,
            provide_cluster_info=bool(stanza.get("provideClusterInfo")),
            cluster=dict(cluster),
        )

    def exec_info(self) -> str:
        """KUBERNETES_EXEC_INFO: what the plugin may know about the call."""
        spec: dict[str, Any] = {"interactive": False}
        if self.provide_cluster_info:
            spec["cluster"] = {
                key: self.cluster[key]
                for key in ("server", "certificate-authority-data", "insecure-skip-tls-verify")
                if key in self.cluster
            }
        return json.dumps({"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec})

    async def run(self, environ: Mapping[str, str]) -> ExecCredential:
        env = {**environ, **dict(self.env), "KUBERNETES_EXEC_INFO": self.exec_info()}
        try:
            process = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot run the kubeconfig's exec plugin {self.command}: {exc.strerror}"
            ) from exc
        try:
            out, err = await asyncio.wait_for(process.communicate(), EXEC_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise KubeUnavailable(
                f"the kubeconfig's exec plugin {self.command} gave no credential within "
                f"{EXEC_TIMEOUT_SECONDS:.0f} s",
                retry_after=10,
            ) from None
        if process.returncode != 0:
            detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise KubeUnavailable(
                f"the kubeconfig's exec plugin {self.command} exited {process.returncode}: "
                f"{detail[0][:200]}",
                retry_after=10,
            )
        return parse_exec_credential(out, self.api_version, what=self.command)


def parse_exec_credential(output: bytes, api_version: str, *, what: str) -> ExecCredential:
    """The plugin's stdout as an ExecCredential; messages never quote it (it holds secrets)."""
    problem = f"the kubeconfig's exec plugin {what} printed no valid ExecCredential"
    try:
        document = json.loads(output)
    except ValueError:
        raise ConfigurationError(f"{problem} (not JSON)") from None
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise ConfigurationError(f"{problem} (kind is not ExecCredential)")
    if document.get("apiVersion") != api_version:
        raise ConfigurationError(f"{problem} (apiVersion is not {api_version})")
    status = document.get("status") or {}
    token = status.get("token")
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if not token and not (cert and key):
        raise ConfigurationError(f"{problem} (neither a token nor a client certificate and key)")
    expires = status.get("expirationTimestamp")
    try:
        expires_at = dt.datetime.fromisoformat(expires) if expires else None
    except (TypeError, ValueError):
        raise ConfigurationError(f"{problem} (expirationTimestamp is not RFC 3339)") from None
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.UTC)
    return ExecCredential(
        token=SecretStr(str(token)) if token else None,
        client_cert_pem=str(cert).encode() if cert else None,
        client_key_pem=SecretBytes(str(key).encode()) if key else None,
        expires_at=expires_at,
    )


# --- kubeconfig files ---


@dataclass(frozen=True)
class _Named:
    body: Mapping[str, Any]
    base: Path  # the directory of the file that defined it: relative paths start there


@dataclass(frozen=True)
class Kubeconfig:
    """The current context of one or more merged kubeconfig files."""

    context_name: str
    cluster: _Named
    user: _Named
    namespace: str | None
    paths: tuple[Path, ...]

    @classmethod
    def load(cls, paths: tuple[Path, ...]) -> Kubeconfig:
        """Merged as kubectl and Kopf merge them: the first file that sets a name wins."""
        current: str | None = None
        named: dict[str, dict[str, _Named]] = {"contexts": {}, "clusters": {}, "users": {}}
        found: list[Path] = []
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue  # as kubectl: a missing file in $KUBECONFIG is skipped
            except OSError as exc:
                raise ConfigurationError(f"cannot read kubeconfig {path}: {exc.strerror}") from exc
            found.append(path)
            try:
                config = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ConfigurationError(f"kubeconfig {path} is not YAML") from exc
            current = current or config.get("current-context")
            singular = {"contexts": "context", "clusters": "cluster", "users": "user"}
            for section, inner in singular.items():
                for item in config.get(section) or ():
                    named[section].setdefault(
                        str(item["name"]), _Named(item.get(inner) or {}, path.parent)
                    )
        where = ", ".join(map(str, paths))
        if not found:
            raise ConfigurationError(f"no kubeconfig at {where}")
        context = named["contexts"].get(current or "")
        if context is None:
            raise ConfigurationError(f"kubeconfig {where} has no current context")
        cluster = named["clusters"].get(str(context.body.get("cluster")))
        if cluster is None:
            raise ConfigurationError(f"kubeconfig {where}: context {current} has no cluster")
        user = named["users"].get(str(context.body.get("user")), _Named({}, context.base))
        namespace = context.body.get("namespace")
        return cls(str(current), cluster, user, namespace, tuple(found))

    @property
    def source(self) -> str:
        return f"kubeconfig {':'.join(map(str, self.paths))} (context {self.context_name})"

    def exec_plugin(self) -> ExecPlugin | None:
        stanza = self.user.body.get("exec")
        if not stanza:
            return None
        return ExecPlugin.from_kubeconfig(stanza, self.user.base, self.cluster.body)

    def identity(self, credential: ExecCredential | None = None) -> KubeIdentity:
        """The identity this context describes; an exec plugin's credential completes it."""
        cluster, user = self.cluster.body, self.user.body
        if not cluster.get("server"):
            raise ConfigurationError(f"{self.source}: the cluster has no server")
        if user.get("username") or user.get("password"):
            raise ConfigurationError(
                f"{self.source}: basic authentication (username/password) is gone from "
                "Kubernetes since 1.19; use a token, a certificate or an exec plugin"
            )
        # `token` before `tokenFile`, as kubeconfig's reference says (and Kopf reads only `token`).
        token = user.get("token") or _read(self.user, "tokenFile", text=True)
        token = token or (user.get("auth-provider") or {}).get("config", {}).get("access-token")
        cert = _read(self.user, "client-certificate") or _data(user, "client-certificate-data")
        key = _read(self.user, "client-key") or _data(user, "client-key-data")
        expires_at = None
        if credential is not None:
            token = credential.token.get_secret_value() if credential.token else None
            if credential.client_cert_pem is not None and credential.client_key_pem is not None:
                cert = credential.client_cert_pem
                key = credential.client_key_pem.get_secret_value()
            expires_at = credential.expires_at
        return KubeIdentity(
            server=str(cluster["server"]),
            source=self.source,
            ca_pem=_read(self.cluster, "certificate-authority")
            or _data(cluster, "certificate-authority-data"),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            token=SecretStr(str(token).strip()) if token else None,
            client_cert_pem=cert,
            client_key_pem=SecretBytes(key) if key else None,
            default_namespace=str(self.namespace) if self.namespace else None,
            expires_at=expires_at,
        )


def _read(named: _Named, key: str, *, text: bool = False) -> Any:
    value = named.body.get(key)
    if not value:
        return None
    path = named.base / os.path.expanduser(str(value))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the kubeconfig's {key} {path}: {exc.strerror}"
        ) from exc
    return data.decode().strip() if text else data


def _data(body: Mapping[str, Any], key: str) -> bytes | None:
    value = body.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise ConfigurationError(f"the kubeconfig's {key} is not base64") from None


def service_account_identity(directory: Path, environ: Mapping[str, str]) -> KubeIdentity:
    """The pod's own identity; the server from the variables the kubelet sets (as client-go)."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    ca_path, ns_path = directory / "ca.crt", directory / "namespace"
    namespace = ns_path.read_text(encoding="utf-8").strip() if ns_path.exists() else None
    return KubeIdentity(
        server=f"https://{host}:{port}",
        source=f"service account ({directory})",
        ca_pem=ca_path.read_bytes() if ca_path.exists() else None,
        token=SecretStr((directory / "token").read_text(encoding="utf-8").strip()),
        default_namespace=namespace or None,
    )


def kubeconfig_paths(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """$KUBECONFIG's list, else ~/.kube/config."""
    listed = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    if listed:
        return tuple(Path(os.path.expanduser(p.strip())) for p in listed)
    home = environ.get("HOME") or os.path.expanduser("~")
    return (Path(home) / ".kube" / "config",)


class KubeLogin:
    """The one login function: logs in once, keeps the identity, renews it when it expired or
    was refused. Concurrent callers share one login (one plugin run)."""

    def __init__(
        self,
        *,
        kubeconfig: Path | str | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        self._service_account_dir = service_account_dir
        self._environ = environ if environ is not None else os.environ
        self._clock = clock
        self._current: KubeIdentity | None = None
        self._lock = asyncio.Lock()
        self.logins = 0

    @property
    def current(self) -> KubeIdentity | None:
        return self._current

    async def identity(self) -> KubeIdentity:
        """The current identity; a new login if there is none yet or it expired."""
        current = self._current
        if current is not None and not current.expired(self._clock()):
            return current
        async with self._lock:
            current = self._current
            if current is None or current.expired(self._clock()):
                current = self._current = await self._login()
            return current

    async def renew(self, refused: KubeIdentity | None) -> KubeIdentity:
        """Log in again because `refused` was refused (a 401), unless someone already did."""
        async with self._lock:
            current = self._current
            if current is None or current is refused or current.expired(self._clock()):
                current = self._current = await self._login()
            return current

    async def _login(self) -> KubeIdentity:
        self.logins += 1
        if self._kubeconfig is None and (self._service_account_dir / "token").exists():
            return service_account_identity(self._service_account_dir, self._environ)
        paths = (self._kubeconfig,) if self._kubeconfig else kubeconfig_paths(self._environ)
        kubeconfig = Kubeconfig.load(paths)
        plugin = kubeconfig.exec_plugin()
        credential = await plugin.run(self._environ) if plugin is not None else None
        identity = kubeconfig.identity(credential)
        if identity.expired(self._clock()):
            logger.warning("%s gave a credential that has expired already", identity.source)
        return identity


@dataclass(eq=False)
class _Pool:
    """One connection pool for one identity's TLS material, and how many responses use it."""

    transport: httpx.AsyncHTTPTransport
    material: tuple[object, ...]
    in_use: int = 0
    retired: bool = False


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its pool when it is closed (read to the end or dropped)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], Awaitable[None]]):
        self._stream = stream
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


class KubeTransport(httpx.AsyncBaseTransport):
    """Sends each request as the login's current identity: its bearer token, its TLS material.

    A 401 renews the identity once and sends the request again; a second 401 is the answer.
    The client certificate is part of the TLS connection, not of a header, so a renewed
    identity with other TLS material gets a new connection pool (an `httpx.Auth` could not
    change it). The pool it replaces is closed as soon as the last response read through it
    is closed: a certificate that rotates every hour must not leave a pool behind each time.
    """

    def __init__(self, login: KubeLogin, *, limits: httpx.Limits | None = None) -> None:
        self._login = login
        self._limits = limits or httpx.Limits()
        self._pool: _Pool | None = None
        self._retired: set[_Pool] = set()  # still serving a response; closed when it is done

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        identity = await self._login.identity()
        response = await self._send(identity, request)
        if response.status_code != 401:
            return response
        await response.aclose()
        logger.info("the API server refused %s (401): logging in again", identity.source)
        identity = await self._login.renew(identity)
        return await self._send(identity, request)

    async def _send(self, identity: KubeIdentity, request: httpx.Request) -> httpx.Response:
        if identity.token is not None:
            request.headers["Authorization"] = f"Bearer {identity.token.get_secret_value()}"
        else:
            request.headers.pop("Authorization", None)
        pool = await self._pool_for(identity)
        pool.in_use += 1
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            await self._release(pool)
            raise
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _ReleasingStream(response.stream, lambda: self._release(pool))
        else:  # an async transport always streams asynchronously; nothing left to wait for
            await self._release(pool)
        return response

    async def _pool_for(self, identity: KubeIdentity) -> _Pool:
        material = identity.tls_material()
        current = self._pool
        if current is not None and current.material == material:
            return current
        self._pool = _Pool(
            coalesced_transport(verify=identity.ssl_context(), limits=self._limits), material
        )
        if current is not None:
            current.retired = True
            self._retired.add(current)
            if current.in_use == 0:
                await self._close(current)
        return self._pool

    async def _release(self, pool: _Pool) -> None:
        pool.in_use -= 1
        if pool.retired and pool.in_use == 0:
            await self._close(pool)

    async def _close(self, pool: _Pool) -> None:
        self._retired.discard(pool)
        await pool.transport.aclose()

    async def aclose(self) -> None:
        for pool in [*self._retired, *([self._pool] if self._pool else [])]:
            await pool.transport.aclose()
        self._retired.clear()
        self._pool = None
