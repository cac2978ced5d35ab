"""A real SMTP server for tests and demos: aiosmtpd on 127.0.0.1 with its own throwaway CA.

This module owns the SMTP test double. It speaks real SMTP over real sockets (STARTTLS, implicit
TLS or plain; optional AUTH PLAIN/LOGIN), records what arrives as parsed `EmailMessage`s, and
has knobs for the failures the operator must survive: temporary and permanent replies at RCPT
or DATA, a listener that goes away (connection refused), and a certificate from a CA the client
does not trust. The server runs in aiosmtpd's own thread, so it works from sync and async tests.

Standalone, for a demo:
    python -m tests.doubles.smtp --port 2525 --mode starttls --cert-dir ./certs [--maildir DIR]
prints the subject and text part of every received mail and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import itertools
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Mode = Literal["starttls", "implicit", "plain"]
Stage = Literal["rcpt", "data"]

START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA a client should trust, and the server's chain and key."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "matrix-invite-operator tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_certificates(directory: Path, *, ca_name: str = "SMTP double test CA") -> Certificates:
    """A fresh CA and a server certificate for 127.0.0.1, ::1 and localhost, written to `directory`.

    A separate CA (instead of one self-signed leaf) keeps verification on the ordinary path:
    the client checks a chain, host name and extended key usage exactly as against a real relay.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    certs = Certificates(
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server-key.pem",
    )
    certs.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certs.key_path.chmod(0o600)
    return certs


def load_or_make_certificates(directory: Path) -> Certificates:
    """Reuse the files in `directory` if all three exist (a demo keeps its CA across restarts)."""
    certs = Certificates(
        directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    )
    if all(p.is_file() for p in (certs.ca_path, certs.cert_path, certs.key_path)):
        return certs
    return make_certificates(directory)


# --- what the server saw ------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted mail: the envelope as sent over SMTP, and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    #: `time.monotonic()` when the server accepted the DATA (rate-limit tests count per window).
    received_at: float = field(default_factory=time.monotonic)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    def part(self, subtype: Literal["plain", "html"]) -> str | None:
        body = self.message.get_body(preferencelist=(subtype,))
        if body is None or body.get_content_subtype() != subtype:
            return None
        content = body.get_content()
        # CRLF is the wire format; tests and the demo output compare against "\n" text.
        return content.replace("\r\n", "\n") if isinstance(content, str) else None

    @property
    def text(self) -> str | None:
        return self.part("plain")

    @property
    def html(self) -> str | None:
        return self.part("html")


@dataclass
class _Fault:
    remaining: int
    code: int
    message: str
    stage: Stage


class _Handler:
    """aiosmtpd hooks; they run in the server thread and talk to the double under its lock."""

    def __init__(self, double: SmtpDouble) -> None:
        self._double = double

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which warns on every
        # connection when TLS is not also required (always the case under implicit TLS).
        if self._double.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        fault = self._double._take_fault("rcpt")
        if fault is not None:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._double._take_fault("data")
        if fault is not None:
            return fault
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not raw:
            raw = envelope.content
        if envelope.smtp_utf8:
            # RFC 6532: headers are raw UTF-8; the bytes parser would surrogate-escape them.
            parsed = email.message_from_string(
                raw.decode("utf-8", "surrogateescape"), policy=email.policy.default
            )
        else:
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self._double._record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                message=parsed,
                raw=raw,
            )
        )
        return "250 2.0.0 Message accepted for delivery"


class _QuietSession(Session):
    # aiosmtpd itself assigns the deprecated `login_data` after every successful AUTH and then
    # logs a deprecation warning per login; a plain attribute here keeps test logs readable.
    login_data: Any = None


class _SMTP(SMTP):
    def _create_session(self) -> Session:
        return _QuietSession(self.loop)


class _Controller(Controller):
    """aiosmtpd's threaded controller on a socket we bound ourselves (port 0 → a free port)."""

    def __init__(
        self, handler: _Handler, *, sock: socket.socket, factory: Callable[[], SMTP], **kwargs: Any
    ) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, ready_timeout=START_TIMEOUT, **kwargs)
        self._sock = sock
        self._make_smtp = factory

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        return self._make_smtp()


# --- the double ---------------------------------------------------------------------------


class SmtpDouble:
    """A real SMTP server on 127.0.0.1 for one test (or one demo run).

    mode: "starttls" (STARTTLS offered and required before MAIL/AUTH), "implicit" (TLS from
    the first byte) or "plain". With `username` and `password`, AUTH PLAIN/LOGIN is offered
    and required; `auth_require_tls` defaults to True for starttls and False otherwise (under
    implicit TLS aiosmtpd cannot tell the connection is encrypted; under plain, the point is
    to let a client log in without TLS).
    """

    def __init__(
        self,
        *,
        mode: Mode = "starttls",
        username: str | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_dir: Path | None = None,
        maildir: Path | None = None,
        auth_require_tls: bool | None = None,
        on_message: Callable[[ReceivedMessage], None] | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.mode: Mode = mode
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.maildir = maildir
        self.auth_require_tls = (
            (mode == "starttls") if auth_require_tls is None else auth_require_tls
        )
        self._on_message = on_message
        self._next_message_action: Callable[[], None] | None = None
        self._own_dir: Path | None = None
        self._cert_dir = cert_dir
        self._certs: Certificates | None = None
        self._rogue: Certificates | None = None
        self._tls_broken = False

        self._lock = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._faults: list[_Fault] = []
        self._auth_attempts: list[tuple[str, str, bool]] = []
        self._connections = 0
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._counter = itertools.count(1)
        self._controller: _Controller | None = None
        self._started = False

    # -- lifecycle --

    def start(self) -> SmtpDouble:
        if self._started:
            raise RuntimeError("SmtpDouble already started")
        if self._cert_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="smtp-double-"))
            self._certs = make_certificates(self._own_dir / "trusted")
        else:
            self._certs = load_or_make_certificates(self._cert_dir)
        if self.maildir is not None:
            self.maildir.mkdir(parents=True, exist_ok=True)
        self._started = True
        try:
            self._listen()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._unlisten()
        self._started = False
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None
            self._rogue = None

    def __enter__(self) -> SmtpDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SmtpDouble:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- what a client needs --

    @property
    def ca_path(self) -> Path:
        """The CA bundle a client must trust (the double's own CA, never the rogue one)."""
        if self._certs is None:
            raise RuntimeError("SmtpDouble not started")
        return self._certs.ca_path

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # -- what the server saw --

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def auth_attempts(self) -> list[tuple[str, str, bool]]:
        """(mechanism, login, accepted) for every AUTH the server decoded. Never the password."""
        with self._lock:
            return list(self._auth_attempts)

    @property
    def connections(self) -> int:
        """How many client connections the server accepted (its own start-up probe excluded)."""
        with self._lock:
            return self._connections

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._auth_attempts.clear()
            self._faults.clear()
            self._connections = 0

    def wait_for_sync(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least `n` messages arrived; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"SMTP double received {len(self._messages)} message(s), expected {n} "
                        f"within {timeout:g}s"
                    )
                self._lock.wait(left)
            return list(self._messages)

    async def wait_for(
        self,
        n: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    ) -> list[ReceivedMessage]:
        """Like `wait_for_sync`, without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self._messages) >= n:
                    return list(self._messages)
                have = len(self._messages)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"SMTP double received {have} message(s), expected {n} within {timeout:g}s"
                )
            await asyncio.sleep(0.02)

    # -- fault knobs --

    def reject_next(
        self, n: int = 1, *, code: int = 451, message: str | None = None, stage: Stage = "rcpt"
    ) -> None:
        """Answer the next `n` RCPT (or DATA) commands with `code` instead of accepting them."""
        if not 400 <= code < 600:
            raise ValueError("code must be a 4xx or 5xx SMTP reply code")
        if message is None:
            message = (
                "4.3.0 Temporary failure, try again later"
                if code < 500
                else "5.1.1 Mailbox unavailable"
            )
        with self._lock:
            self._faults.append(_Fault(remaining=n, code=code, message=message, stage=stage))

    def refuse_connections(self) -> None:
        """Stop listening: new connections get ECONNREFUSED until `accept_connections()`."""
        self._unlisten()

    def accept_connections(self) -> None:
        """Listen again, on the same port."""
        if self._controller is None:
            self._listen()

    def close_sessions(
        self, reply: str | None = "421 4.4.2 smtp-double.test closing idle connection"
    ) -> int:
        """End every open client session from the server's side, as a relay's idle timeout or
        restart does: `reply` first (None: a silent close). Returns how many were open."""
        controller = self._controller
        if controller is None:
            return 0
        done = threading.Event()
        closed: list[int] = []

        def close_all() -> None:
            try:
                with self._lock:
                    servers = list(self._sessions)
                for server in servers:
                    transport = server.transport
                    if transport is None or transport.is_closing():
                        continue
                    if reply is not None:
                        transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
                    transport.close()
                    closed.append(1)
            finally:
                done.set()

        if threading.current_thread() is controller._thread:
            close_all()  # from a hook (`on_next_message`): already on the server's loop
            return len(closed)
        controller.loop.call_soon_threadsafe(close_all)
        if not done.wait(STOP_TIMEOUT):
            raise TimeoutError(f"SMTP double did not close its sessions within {STOP_TIMEOUT:g}s")
        return len(closed)

    @property
    def open_sessions(self) -> int:
        """Client sessions open now (the server has not seen them end)."""
        with self._lock:
            servers = list(self._sessions)
        return sum(1 for s in servers if s.transport is not None and not s.transport.is_closing())

    def break_tls(self) -> None:
        """Serve a certificate from a CA nobody trusts (takes effect for new connections)."""
        self._tls_broken = True
        self._relisten()

    def fix_tls(self) -> None:
        self._tls_broken = False
        self._relisten()

    # -- internals --

    def _relisten(self) -> None:
        if self._controller is not None:
            self._unlisten()
            self._listen()

    def _server_certs(self) -> Certificates:
        assert self._certs is not None
        if not self._tls_broken:
            return self._certs
        if self._rogue is None:
            if self._own_dir is None:
                self._own_dir = Path(tempfile.mkdtemp(prefix="smtp-double-"))
            self._rogue = make_certificates(self._own_dir / "rogue", ca_name="Unknown rogue CA")
        return self._rogue

    def _listen(self) -> None:
        if not self._started:
            raise RuntimeError("SmtpDouble not started")
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            # Re-binding the same port after refuse_connections() must not trip over TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(16)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]

        tls = self._server_certs().server_context() if self.mode != "plain" else None
        smtp_kwargs: dict[str, Any] = {
            "hostname": "smtp-double.test",  # avoids a getfqdn() DNS lookup per connection
            "timeout": 30,
            "enable_SMTPUTF8": True,
            "auth_require_tls": self.auth_require_tls if self.mode != "implicit" else False,
        }
        if self.mode == "starttls":
            smtp_kwargs["tls_context"] = tls
            smtp_kwargs["require_starttls"] = True
        if self.username is not None:
            smtp_kwargs["authenticator"] = self._authenticate

        handler = _Handler(self)

        def factory() -> SMTP:
            server = _SMTP(handler, **smtp_kwargs)
            with self._lock:
                self._connections += 1
                self._sessions.add(server)
            return server

        controller = _Controller(
            handler,
            sock=sock,
            factory=factory,
            ssl_context=tls if self.mode == "implicit" else None,
        )
        try:
            controller.start()
        except BaseException:
            sock.close()
            raise
        with self._lock:
            # The controller's own start-up probe is not a client.
            self._connections -= 1
        self._controller = controller

    def _unlisten(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        controller.loop.call_soon_threadsafe(controller.cancel_tasks)
        thread = controller._thread
        if thread is not None:
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                raise TimeoutError(f"SMTP double did not stop within {STOP_TIMEOUT:g}s")

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            assert self.username is not None
            assert self.password is not None
            ok = auth_data.login == self.username.encode() and (
                auth_data.password == self.password.encode()
            )
        with self._lock:
            self._auth_attempts.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False)

    def _take_fault(self, stage: Stage) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.stage == stage and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return f"{fault.code} {fault.message}"
        return None

    def _record(self, received: ReceivedMessage) -> None:
        if self.maildir is not None:
            name = f"{time.time_ns()}-{next(self._counter)}.eml"
            tmp = self.maildir / f".{name}.tmp"
            tmp.write_bytes(received.raw)
            tmp.replace(self.maildir / name)  # atomic: a watcher never sees half a file
        with self._lock:
            self._messages.append(received)
            self._lock.notify_all()
        if self._on_message is not None:
            self._on_message(received)
        with self._lock:
            action, self._next_message_action = self._next_message_action, None
        if action is not None:
            action()

    def on_next_message(self, action: Callable[[], None]) -> None:
        """Run `action` once, when the next message is stored and before the client hears 250:
        the relay has the mail, the sender does not know it yet (the duplicate-mail window)."""
        with self._lock:
            self._next_message_action = action


# --- standalone -----------------------------------------------------------------------------


def _print_message(received: ReceivedMessage) -> None:
    out = sys.stdout
    out.write(f"=== mail from {received.mail_from} to {', '.join(received.rcpt_tos)}\n")
    out.write(f"Subject: {received.subject}\n\n")
    out.write((received.text or "(no text part)").rstrip("\n") + "\n")
    out.write("=== end\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.doubles.smtp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--mode", choices=["starttls", "implicit", "plain"], default="starttls")
    parser.add_argument("--cert-dir", type=Path, help="keep ca.pem/server.pem here (reused)")
    parser.add_argument("--maildir", type=Path, help="also write each mail as DIR/<n>.eml")
    parser.add_argument("--username")
    parser.add_argument("--password-file", type=Path, help="file holding the AUTH password")
    args = parser.parse_args(argv)

    password = None
    if args.username is not None:
        if args.password_file is None:
            parser.error("--username needs --password-file")
        password = args.password_file.read_text(encoding="utf-8").strip()

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    double = SmtpDouble(
        mode=args.mode,
        username=args.username,
        password=password,
        host=args.host,
        port=args.port,
        cert_dir=args.cert_dir,
        maildir=args.maildir,
        on_message=_print_message,
    )
    with double:
        ca = f", CA {double.ca_path}" if args.mode != "plain" else ""
        print(f"SMTP double listening on {double.host}:{double.port} ({args.mode}{ca})", flush=True)
        while not stop.wait(0.5):
            pass
    print("SMTP double stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
