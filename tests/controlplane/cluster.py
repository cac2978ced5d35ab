"""A real Kubernetes control plane on 127.0.0.1 for tests and demos (the envtest approach).

Owns the lifecycle of three processes built by :mod:`tests.controlplane.build`: etcd,
kube-apiserver and kube-controller-manager (garbage collection, namespace finalisation,
service accounts). No kubelet, so Pods never run. Authentication is by static bearer tokens
(``--token-auth-file``): an ``admin`` in ``system:masters`` plus the identities passed to the
constructor, which have no RBAC rights until a test grants them; client certificates signed by
the harness's client CA (:meth:`ControlPlane.client_certificate`) are accepted too.
Authorisation is real RBAC.

Every process runs in its own session, is tracked by PID, logs to ``<workdir>/<name>.log`` and is
stopped by PID (SIGTERM, then SIGKILL after 10 s) by :meth:`ControlPlane.stop`, which is also
registered with :mod:`atexit`.

Reads and small writes in polling loops go straight to the API (:meth:`ControlPlane.api`, one
HTTPS request, no process): a ``kubectl`` fork costs a fraction of a CPU second, which a test
that polls twice a second on a shared 2-core machine pays many times over. ``kubectl`` stays for
what tests do as an admin would (apply, create, wait, auth).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import csv
import datetime
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.controlplane.build import Binaries, ensure_binaries

HOST = "127.0.0.1"
ADMIN_USER = "admin"
ADMIN_GROUPS = ("system:masters",)

STOP_GRACE_SECONDS = 10.0
ETCD_OUTAGE_GRACE_SECONDS = 1.0
# On SIGTERM kube-apiserver stops listening at once, then waits for its open watches to end; a
# client's watch does not end (an operator's; one a test proxy still holds open for a killed
# operator), so each restart and each teardown with a watch open ran into STOP_GRACE_SECONDS and
# was killed anyway: 10 s of a refused port. It is killed after this instead, the same stop.
APISERVER_STOP_GRACE_SECONDS = 1.0
KUBECTL_TIMEOUT_SECONDS = 60.0
API_TIMEOUT_SECONDS = 30.0
LOG_TAIL_LINES = 40
# Ports are picked by binding to port 0 and releasing it, so another process can grab one before
# our server binds it; a fresh set of ports on retry makes that harmless.
START_ATTEMPTS = 3

# Minimal set for real owner-reference garbage collection, namespace deletion and the
# per-namespace "default" ServiceAccount; the rest (nodes, pods, volumes...) needs a kubelet.
CONTROLLERS = "garbagecollector,namespace,serviceaccount,serviceaccount-token"


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start, died, or did not become ready in time."""


class ApiError(RuntimeError):
    """The API server answered a direct request (:meth:`ControlPlane.api`) with an error."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {body}")
        self.status = status
        self.body = body


class KubectlError(subprocess.CalledProcessError):
    """``kubectl`` exited non-zero; unlike the base class, ``str()`` shows its stderr."""

    def __str__(self) -> str:
        args = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        return f"{args!r} exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass
class _Process:
    name: str
    args: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def start(self) -> None:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.log_file.write(f"\n=== starting {' '.join(self.args)}\n".encode())
        self.log_file.flush()
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=None if self.env is None else {**os.environ, **self.env},
            # Own session: a Ctrl-C in the terminal reaches only our supervisor, which then stops
            # the children in order, rather than killing them all at once mid-write.
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        popen = self.popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        self.popen = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _insecure_tls() -> ssl.SSLContext:
    # Only for local readiness probes, which run before the apiserver has written its certificate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _http_status(
    url_host: str, port: int, path: str, *, tls: bool, token: str | None = None
) -> int | None:
    """Status of a GET, or None if nothing answers yet."""
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection(url_host, port, timeout=2, context=_insecure_tls())
    else:
        conn = http.client.HTTPConnection(url_host, port, timeout=2)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1, as a context manager.

    ``identities`` maps extra static users to their groups; each gets a random token, available
    from :meth:`token_for` and :meth:`kubeconfig_for`. They must be known before start because
    the apiserver reads its token file once.
    """

    def __init__(
        self,
        identities: Mapping[str, Sequence[str]] | None = None,
        *,
        binaries: Binaries | None = None,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        controller_manager: bool = True,
        startup_timeout: float = 60.0,
    ) -> None:
        identities = dict(identities or {})
        if ADMIN_USER in identities:
            raise ValueError(f"{ADMIN_USER!r} is reserved for the built-in admin identity")
        self._binaries = binaries
        self._identities: dict[str, tuple[str, ...]] = {ADMIN_USER: ADMIN_GROUPS}
        self._identities.update({user: tuple(groups) for user, groups in identities.items()})
        self._tokens = {user: secrets.token_urlsafe(32) for user in self._identities}
        self._requested_workdir = workdir
        self._keep_workdir = keep_workdir or workdir is not None
        self._with_controller_manager = controller_manager
        self._startup_timeout = startup_timeout
        self._workdir: Path | None = None
        self._processes: dict[str, _Process] = {}
        self._etcd_port = 0
        self._apiserver_port = 0
        self._kcm_port = 0
        self._started = False
        self._atexit_registered = False
        # Built on first use; the apiserver keeps its certificate across restarts (same cert-dir).
        self._api_tls: ssl.SSLContext | None = None
        # apiVersion -> {kind: (plural, namespaced)}, read from discovery on first use.
        self._discovered: dict[str, dict[str, tuple[str, bool]]] = {}

    # -- public properties -------------------------------------------------------------------

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_binaries()
        return self._binaries

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("control plane not started")
        return self._workdir

    @property
    def server_url(self) -> str:
        return f"https://{HOST}:{self._apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://{HOST}:{self._etcd_port}"

    @property
    def kubeconfig_path(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.workdir / "kubeconfig"

    @property
    def admin_token(self) -> str:
        return self._tokens[ADMIN_USER]

    def token_for(self, user: str) -> str:
        try:
            return self._tokens[user]
        except KeyError:
            raise KeyError(
                f"no static identity {user!r}; pass it in ControlPlane(identities=...)"
            ) from None

    def pids(self) -> dict[str, int]:
        """PIDs of the running processes by name (etcd, kube-apiserver, kube-controller-manager)."""
        return {
            name: proc.pid
            for name, proc in self._processes.items()
            if proc.pid is not None and proc.running()
        }

    def log_path(self, name: str) -> Path:
        return self._processes[name].log_path

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._started:
            raise ControlPlaneError("control plane already started")
        binaries = self.binaries
        if self._requested_workdir is not None:
            self._requested_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir = self._requested_workdir.resolve()
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="controlplane-"))
        self._api_tls = None
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        self._started = True
        try:
            self._write_static_files()
            for attempt in range(1, START_ATTEMPTS + 1):
                self._etcd_port, self._apiserver_port, self._kcm_port = self._distinct_ports(3)
                self._processes = self._define_processes(binaries)
                try:
                    self._start_etcd()
                    self._start_apiserver()
                    break
                except ControlPlaneError as exc:
                    self._stop_processes()
                    if attempt == START_ATTEMPTS or "address already in use" not in str(exc):
                        raise
            self._write_kubeconfig(self.kubeconfig_path, ADMIN_USER)
            if self._with_controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process (controller-manager, apiserver, etcd) by PID; idempotent."""
        self._stop_processes()
        if self._workdir is not None and not self._keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._started = False
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def restart_apiserver(self) -> None:
        """Stop and start kube-apiserver on the same port with the same etcd and certificates."""
        proc = self._processes["kube-apiserver"]
        proc.stop(grace=APISERVER_STOP_GRACE_SECONDS)
        self._start_apiserver()

    def restart_etcd(self) -> None:
        """Stop and start etcd on the same port and data dir; waits for the apiserver to recover."""
        self.stop_etcd()
        self._start_etcd()
        self._wait_apiserver_ready()

    def stop_etcd(self) -> None:
        """Stop etcd only (for outage tests); :meth:`restart_etcd` brings it back.

        Under a running apiserver, SIGTERM alone takes etcd about 7 s: it waits for the
        apiserver's watch streams to close. The apiserver loses etcd at the signal either way, and
        a kill loses no data (writes are in the OS's page cache when etcd answers them), so after
        a short grace etcd is killed."""
        self._processes["etcd"].stop(grace=ETCD_OUTAGE_GRACE_SECONDS)

    # -- kubectl and kubeconfigs -------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = KUBECTL_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane (as admin unless ``kubeconfig``)."""
        cmd = [
            str(self.binaries.kubectl),
            f"--kubeconfig={kubeconfig or self.kubeconfig_path}",
            # A private discovery cache: the default ~/.kube/cache is shared with other clusters.
            f"--cache-dir={self.workdir / 'kube-cache'}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    # -- the API, directly ---------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
        user: str = ADMIN_USER,
        timeout: float = API_TIMEOUT_SECONDS,
    ) -> dict[str, Any] | None:
        """One request to the API server as ``user`` (admin by default); the parsed JSON answer,
        or None for 404. Any other error status raises :class:`ApiError`. ``body`` is sent as
        JSON (``content_type`` says which patch flavour, e.g. ``application/merge-patch+json``).

        Safe from several threads: each call opens its own connection."""
        if self._api_tls is None:
            self._api_tls = ssl.create_default_context(cafile=str(self._ca_path))
        conn = http.client.HTTPSConnection(
            HOST, self._apiserver_port, timeout=timeout, context=self._api_tls
        )
        headers = {"Authorization": f"Bearer {self.token_for(user)}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=payload, headers=headers)
            answer = conn.getresponse()
            text = answer.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        if answer.status == 404:
            return None
        if answer.status >= 400:
            raise ApiError(method, path, answer.status, text)
        parsed: dict[str, Any] = json.loads(text) if text else {}
        return parsed

    def get(self, path: str) -> dict[str, Any] | None:
        """``GET path`` as admin: the object, or None when it does not exist."""
        return self.api("GET", path)

    def server_side_apply(
        self, objects: Sequence[Mapping[str, Any]], *, field_manager: str = "tests"
    ) -> None:
        """Server-side apply of each object as admin, as ``kubectl apply --server-side
        --force-conflicts`` does it, one HTTPS request per object and no process."""
        for body in objects:
            self.api(
                "PATCH",
                f"{self.object_path(body)}?fieldManager={field_manager}&force=true",
                body,
                content_type="application/apply-patch+yaml",  # JSON is YAML
            )

    def object_path(self, body: Mapping[str, Any]) -> str:
        """The API path of an object (its ``apiVersion``, ``kind``, ``metadata.name`` and, for a
        namespaced kind, ``metadata.namespace``), from the API server's discovery."""
        api_version: str = body["apiVersion"]
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        # Read again when a kind is missing: a CRD may have added it since.
        if body["kind"] not in self._discovered.get(api_version, {}):
            found = self.get(base)
            if found is None:
                raise ApiError("GET", base, 404, f"the API server serves no {api_version}")
            self._discovered[api_version] = {
                resource["kind"]: (resource["name"], resource["namespaced"])
                for resource in found["resources"]
                if "/" not in resource["name"]  # subresources such as roles/status
            }
        plural, namespaced = self._discovered[api_version][body["kind"]]
        metadata = body["metadata"]
        if namespaced:
            return f"{base}/namespaces/{metadata['namespace']}/{plural}/{metadata['name']}"
        return f"{base}/{plural}/{metadata['name']}"

    def kubeconfig_for(self, user: str) -> Path:
        """Write (or rewrite) a kubeconfig for a static identity and return its path."""
        self.token_for(user)
        path = self.workdir / f"kubeconfig-{user}"
        self._write_kubeconfig(path, user)
        return path

    def kubeconfig_with_user(self, name: str, stanza: Mapping[str, object]) -> Path:
        """Write a kubeconfig whose user is `stanza` (an exec plugin, a client certificate...)."""
        path = self.workdir / f"kubeconfig-{name}"
        self._write_kubeconfig(path, name, stanza)
        return path

    def client_certificate(self, user: str, groups: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """PEM certificate and key for `user` in `groups`, signed by the client CA the apiserver
        trusts (``--client-ca-file``)."""
        ca_key = serialization.load_pem_private_key(
            (self.workdir / "client-ca.key").read_bytes(), password=None
        )
        ca_cert = x509.load_pem_x509_certificate((self.workdir / "client-ca.crt").read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, user)]
            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        )
        now = datetime.datetime.now(datetime.UTC)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def apply_crds(self, path: Path | str, timeout: float = 60.0) -> list[str]:
        """``kubectl apply -f path``, then wait until every CRD applied is Established.

        Returns the applied object names (``kind.group/name``).
        """
        applied = self.kubectl("apply", "-f", str(path), "-o", "name").stdout.split()
        crds = [name for name in applied if name.startswith("customresourcedefinition.")]
        if crds:
            self.kubectl(
                "wait",
                "--for=condition=Established",
                f"--timeout={int(timeout)}s",
                *crds,
                timeout=timeout + 10,
            )
        return applied

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _distinct_ports(count: int) -> list[int]:
        ports: set[int] = set()
        while len(ports) < count:
            ports.add(_free_port())
        return list(ports)

    def _write_static_files(self) -> None:
        workdir = self.workdir
        for sub in ("etcd", "apiserver-certs", "controller-manager-certs", "kube-cache"):
            (workdir / sub).mkdir(mode=0o700, exist_ok=True)
        key_path, pub_path = workdir / "sa.key", workdir / "sa.pub"
        # Reused when the workdir is: tokens signed by an earlier run of a demo stay valid.
        if not key_path.exists() or not pub_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            key_path.chmod(0o600)
            pub_path.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        client_ca_path = workdir / "client-ca.crt"
        if not client_ca_path.exists():  # for identities by client certificate
            ca_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "controlplane-client-ca")])
            now = datetime.datetime.now(datetime.UTC)
            ca_cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256())
            )
            (workdir / "client-ca.key").write_bytes(
                ca_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (workdir / "client-ca.key").chmod(0o600)
            client_ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        token_path = workdir / "tokens.csv"
        with open(token_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
            for user, groups in self._identities.items():
                row = [self._tokens[user], user, f"uid-{user}"]
                # An empty fourth column would put the user in a group named "".
                if groups:
                    row.append(",".join(groups))
                writer.writerow(row)
        token_path.chmod(0o600)

    def _define_processes(self, binaries: Binaries) -> dict[str, _Process]:
        workdir = self.workdir
        etcd = [
            str(binaries.etcd),
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://{HOST}:0",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
        apiserver = [
            str(binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--secure-port={self._apiserver_port}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--authorization-mode=RBAC",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            f"--client-ca-file={workdir / 'client-ca.crt'}",
            f"--service-account-issuer=https://{HOST}:{self._apiserver_port}/",
            f"--service-account-key-file={workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            # The default reconciler keeps trying to publish a loopback address, which Endpoints
            # validation rejects: log noise only.
            "--endpoint-reconciler-type=none",
        ]
        controller_manager = [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={self.kubeconfig_path}",
            f"--controllers={CONTROLLERS}",
            "--leader-elect=false",
            f"--bind-address={HOST}",
            f"--secure-port={self._kcm_port}",
            f"--cert-dir={workdir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={workdir / 'sa.key'}",
            "--use-service-account-credentials=false",
        ]
        return {
            name: _Process(name, args, workdir / f"{name}.log")
            for name, args in (
                ("etcd", etcd),
                ("kube-apiserver", apiserver),
                ("kube-controller-manager", controller_manager),
            )
        }

    def _stop_processes(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._processes.get(name)
            if proc is not None:
                proc.stop(
                    grace=APISERVER_STOP_GRACE_SECONDS
                    if name == "kube-apiserver"
                    else STOP_GRACE_SECONDS
                )

    def _wait(self, proc: _Process, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if not proc.running():
                raise ControlPlaneError(
                    f"{proc.name} exited while waiting for {what}; log tail:\n{proc.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{proc.name} not ready ({what}) within {self._startup_timeout:.0f}s; "
            f"log tail:\n{proc.log_tail()}"
        )

    def _start_etcd(self) -> None:
        proc = self._processes["etcd"]
        proc.start()
        self._wait(
            proc,
            "/health",
            lambda: _http_status(HOST, self._etcd_port, "/health", tls=False) == 200,
        )

    def _start_apiserver(self) -> None:
        self._processes["kube-apiserver"].start()
        self._wait_apiserver_ready()

    def _wait_apiserver_ready(self) -> None:
        self._wait(
            self._processes["kube-apiserver"],
            "/readyz",
            lambda: (
                _http_status(
                    HOST, self._apiserver_port, "/readyz", tls=True, token=self.admin_token
                )
                == 200
            ),
        )

    def _start_controller_manager(self) -> None:
        proc = self._processes["kube-controller-manager"]
        proc.start()
        self._wait(
            proc,
            "/healthz",
            lambda: _http_status(HOST, self._kcm_port, "/healthz", tls=True) == 200,
        )

    @property
    def _ca_path(self) -> Path:
        # The apiserver's self-generated serving certificate file holds its chain up to its own CA,
        # which is all a client needs to trust; it is written before /readyz first answers.
        return self.workdir / "apiserver-certs" / "apiserver.crt"

    def _write_kubeconfig(
        self, path: Path, user: str, stanza: Mapping[str, object] | None = None
    ) -> None:
        ca_pem = self._ca_path.read_bytes()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "controlplane",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": dict(stanza or {"token": self._tokens[user]})}],
            "contexts": [{"name": user, "context": {"cluster": "controlplane", "user": user}}],
            "current-context": user,
            "preferences": {},
        }
        # JSON is YAML, so every kubeconfig reader accepts it; write-then-rename so a reader
        # never sees a half-written file.
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
        os.replace(tmp, path)
