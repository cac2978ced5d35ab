"""Turning a rendered mail into a MIME message and handing it to the SMTP relay.

This module owns the wire side of the invitation mail: headers (From, To, Subject, Date and a
deterministic Message-ID), the multipart/alternative body, the TLS policy towards the relay and
the translation of every SMTP or socket failure into `MailTemporaryError` (waiting can help) or
`MailRejectedError` (a human must act). Error texts name the relay, the stage and the server's
reply; they never contain the SMTP password, the token or the message body.

It also owns the sessions kept between mails: the operator's mailer keeps a logged-in session
for a few seconds, so that a burst of mails costs one connection, TLS handshake and login, not one
per mail (issue 24). A kept session is used only while nothing went wrong on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.errors
import email.policy
import functools
import hashlib
import logging
import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import quoprimime
from email.headerregistry import Address, BaseHeader
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import aiosmtplib
from aiosmtplib.email import extract_recipients, flatten_message
from pydantic import SecretStr

from ..errors import (
    ConfigurationError,
    InvalidSpecError,
    MailError,
    MailRejectedError,
    MailSetupError,
    MailTemporaryError,
)
from ..settings import current_secret
from .render import RenderedMail

if TYPE_CHECKING:
    from ..settings import SecretSource, Settings

TlsMode = Literal["starttls", "implicit", "none"]

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=BaseException)

# Characters that cannot appear unquoted in a local part; quoted non-ASCII local parts are not
# worth supporting.
_NON_ATOM = re.compile(r'[\s"(),:;<>@\[\\\]]')


#: How long the operator's mailer keeps a logged-in session for the next mail. Relays wait
#: minutes for a client's next command (RFC 5321: at least 5); a few seconds span a burst, or
#: the next mail at the default rate limit (30 a minute), and cost the relay little.
KEEP_ALIVE_SECONDS = 5.0
#: Sessions kept at most; a session finished beyond that is closed at once.
MAX_IDLE_SESSIONS = 2


class _Socket(Protocol):
    """What asyncio's transport hands out as extra info "socket"; -1 once closed."""

    def fileno(self) -> int: ...


@dataclass(eq=False)
class _Session:
    """A connected, secured and logged-in SMTP session (kept between mails, or about to be)."""

    client: aiosmtplib.SMTP
    sock: _Socket | None
    # What it logged in with: after a rotation, a session of the old password is not reused.
    password: str = field(repr=False)
    loop: asyncio.AbstractEventLoop
    expiry: asyncio.TimerHandle | None = None


class _RelayClosedIt(Exception):
    """A kept session failed before the relay accepted MAIL FROM: it had closed it meanwhile
    (idle timeout, restart). Nothing of the mail was accepted: a new session may send it."""


def _single_line(value: str, what: str, error: type[Exception]) -> str:
    if _LINE_BREAK.search(value):
        # Header injection: a newline in a name would let the value smuggle in new headers.
        raise error(f"{what} must not contain line breaks")
    return value


# What a reader may take for the end of a line: CR, LF, the other C0 controls (but tab), DEL,
# and Unicode's line and paragraph separators.
_LINE_BREAK = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")

# The headers whose values come from outside the operator's code, with where each value comes
# from (for the admin) and whose error a bad one is.
_OWN_HEADERS: dict[str, tuple[str, type[Exception]]] = {
    "To": ("the recipient (spec.email, spec.displayName)", InvalidSpecError),
    "From": (
        "the sender (MATRIX_INVITE_MAIL_FROM, MATRIX_INVITE_MAIL_FROM_NAME)",
        ConfigurationError,
    ),
    "Subject": ("the mail subject (template subject.txt)", ConfigurationError),
}


def _check_serialized(msg: EmailMessage, name: str, what: str, error: type[Exception]) -> None:
    """The header as it goes on the wire is one header line, and reads back without a break.

    Python's serializer decodes RFC 2047 encoded words in a value and writes what they decode
    to; before 3.11.10 and 3.12.5 it wrote a decoded CR/LF as a real line break (CVE-2024-6923),
    so a display name such as `=?utf-8?q?x=0D=0ABcc:_y?=` added a header. Later versions encode
    the break, which the recipient's mail client decodes again. Both are checked here on the
    serialized text, with both policies the mail may be sent with (SMTPUTF8 or not), so the
    guarantee holds whatever the Python patch level.

    A value both policies fold alike (any ASCII-only one) is read back once: the same text
    reads back the same (parsing it was most of the mail's CPU in a burst).
    """
    header = msg[name]
    checked: set[str] = set()
    for policy in (email.policy.SMTP, email.policy.SMTPUTF8):
        folded = policy.fold(name, header)
        if folded in checked:
            continue
        checked.add(folded)
        # Every kind of line end counts: relays and clients take a bare CR or LF for one.
        first, *rest = folded.splitlines()
        if first.partition(":")[0] != name or any(
            not line or line[0] not in " \t" or not line.strip() for line in rest
        ):
            raise error(
                f"{what} would add a line of its own to the mail's header (a line break "
                "hidden in an RFC 2047 encoded word?); the mail is not sent"
            )
        read_back = email.message_from_string(folded, policy=email.policy.default)[name]
        texts = [str(read_back)]
        texts += [a.display_name for a in getattr(read_back, "addresses", ())]
        if any(_LINE_BREAK.search(text) for text in texts):
            raise error(
                f"{what} decodes to a line break (an RFC 2047 encoded word such as "
                "=?utf-8?q?...=0A...?=); the mail is not sent"
            )


def _address(
    display_name: str | None, addr_spec: str, what: str, error: type[Exception]
) -> Address:
    _single_line(addr_spec, f"{what} address", error)
    if display_name is not None:
        _single_line(display_name, f"{what} display name", error)
    invalid = f"{what} address {addr_spec!r} is not a valid email address"
    local, at, domain = addr_spec.rpartition("@")
    if not (at and local and domain):
        raise error(invalid)
    try:
        # An internationalised domain goes out as its ASCII (punycode) form, which every
        # relay accepts without SMTPUTF8.
        domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
        if local.isascii():
            return Address(display_name=display_name or "", addr_spec=f"{local}@{domain}")
        # A non-ASCII local part (jörg@example.org) is legal with SMTPUTF8. The email
        # package's parser refuses it, but serialises it fine from parts; aiosmtplib then asks
        # the relay for SMTPUTF8, and a relay without it answers with a clear refusal.
        if _NON_ATOM.search(local):
            raise error(invalid)
        return Address(display_name=display_name or "", username=local, domain=domain)
    except (ValueError, IndexError, TypeError, UnicodeError, email.errors.MessageError) as exc:
        # The email package raises defects (ValueErrors), HeaderParseError or even IndexError.
        raise error(invalid) from exc


@functools.lru_cache(maxsize=8)
def _checked_sender(sender_name: str | None, sender_email: str) -> Address:
    """The From address, checked as it goes out; the same for every mail of one operator, so
    checked once (an `Address` is immutable; a failed check is not cached, it raises)."""
    probe = EmailMessage(policy=email.policy.SMTP)
    probe["From"] = sender = _address(sender_name, sender_email, "sender", ConfigurationError)
    _check_serialized(probe, "From", *_OWN_HEADERS["From"])
    return sender


@functools.lru_cache(maxsize=8)
def _sender_header(sender_name: str | None, sender_email: str) -> BaseHeader:
    """The From header, checked and parsed once per sender (a header is immutable)."""
    return _header("From", _checked_sender(sender_name, sender_email))


@functools.lru_cache(maxsize=64)
def _subject_header(subject: str) -> BaseHeader:
    """The Subject header; each text checked and parsed once (a template and the server's
    facts: one text for many mails)."""
    _single_line(subject, "mail subject", ConfigurationError)
    probe = EmailMessage(policy=email.policy.SMTP)
    probe["Subject"] = subject
    _check_serialized(probe, "Subject", *_OWN_HEADERS["Subject"])
    return _header("Subject", subject)


def _to_header(to: Address) -> BaseHeader:
    """The To header, checked.

    Only an RFC 2047 encoded word in the input can read back as a line break (a break itself
    is refused before, `_single_line`): without "=?" the header is not read back (reading back
    was most of the mail's CPU in a burst, issue 24).
    """
    if "=?" in to.display_name or "=?" in to.addr_spec:
        probe = EmailMessage(policy=email.policy.SMTP)
        probe["To"] = to
        _check_serialized(probe, "To", *_OWN_HEADERS["To"])
    return _header("To", to)


def _header(name: str, value: str | Address) -> BaseHeader:
    """The header object `msg[name] = value` makes; stored with `set_raw`, it is parsed
    neither when read nor when written."""
    header: BaseHeader = email.policy.SMTP.header_factory(name, value)
    return header


def _quoted_printable(text: str) -> str:
    """`text` in UTF-8, quoted-printable, as email.contentmanager encodes it for `set_content`
    (lines joined with LF; the writer puts CRLF on the wire)."""
    body = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    return quoprimime.body_encode(body.decode("latin-1"), _MAX_LINE)


def _text_part(subtype: str, body: str) -> EmailMessage:
    """A text/<subtype> part with its encoded `body`: what `set_content` makes, with headers
    stored as they go out instead of parsed and folded again per mail."""
    part = EmailMessage(policy=email.policy.SMTP)
    part.set_raw("Content-Type", f'text/{subtype}; charset="utf-8"')
    part.set_raw("Content-Transfer-Encoding", "quoted-printable")
    part.set_payload(body)
    return part


_MAX_LINE = email.policy.SMTP.max_line_length or 78


def message_id_for(seed: str, sender_email: str) -> str:
    """A Message-ID that depends only on `seed` and the sender's domain.

    Re-sending the mail for the same token (e.g. after a lost reply from the relay) yields the
    same Message-ID, so mail clients thread or de-duplicate it instead of showing two invites.
    """
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:40]
    domain = sender_email.rpartition("@")[2] or "localhost"
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = "localhost"
    return f"<invitation.{digest}@{domain}>"


def build_message(
    rendered: RenderedMail,
    *,
    to_email: str,
    to_name: str | None,
    message_id_seed: str,
    sender_email: str,
    sender_name: str | None = None,
    date: dt.datetime | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text first, HTML preferred by capable clients).

    Raises `InvalidSpecError` for an unusable recipient (it came from the Invitation) and
    `ConfigurationError` for an unusable sender or subject (they came from the operator).

    The headers are stored as they are sent (`set_raw`): the sender's and subject's parsed
    once per text, the others as the text they are; nothing is parsed again for sending.
    """
    to = _to_header(_address(to_name, to_email, "recipient", InvalidSpecError))
    subject = _subject_header(rendered.subject)
    bodies = (_quoted_printable(rendered.text), _quoted_printable(rendered.html))
    # Random, and checked against the bodies (quoted-printable, so "--=_" cannot be a line of
    # theirs anyway): the generator does not choose one when the header names it.
    boundary = f"=_{secrets.token_hex(12)}"
    while any(boundary in body for body in bodies):
        boundary = f"=_{secrets.token_hex(12)}"

    msg = _Composed(policy=email.policy.SMTP)
    msg.boundary, msg.bodies = boundary, bodies
    # Address objects let the header registry produce RFC 2047 encoded-words for non-ASCII
    # names ("Jörg Müller") instead of us quoting by hand.
    msg.set_raw("From", _sender_header(sender_name, sender_email))
    msg.set_raw("To", to)
    msg.set_raw("Subject", subject)
    msg.set_raw("Date", format_datetime((date or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)))
    msg.set_raw("Message-ID", message_id_for(message_id_seed, sender_email))
    # RFC 3834: tells vacation responders and ticket systems not to answer an automatic mail.
    msg.set_raw("Auto-Submitted", "auto-generated")
    msg.set_raw("MIME-Version", "1.0")
    msg.set_raw("Content-Type", f'multipart/alternative; boundary="{boundary}"')
    # Quoted-printable keeps both parts 7-bit clean, so relays without 8BITMIME pass them
    # unchanged while umlauts stay readable in the raw source.
    msg.set_payload([_text_part("plain", bodies[0]), _text_part("html", bodies[1])])
    return msg


def _wire_form(message: EmailMessage, *, utf8: bool, eight_bit: bool) -> bytes:
    """The message as the relay gets it (before dot-stuffing, which aiosmtplib does).

    One that `build_message` composed is written here as the email package's generator writes
    it, without the generator's parsing of each Content-Type again for every question it asks
    (eleven parses per mail) or of the parts' headers to find their bodies. Anything else goes
    through the generator.
    """
    if not isinstance(message, _Composed):
        return flatten_message(message, utf8=utf8, cte_type="8bit" if eight_bit else "7bit")
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    nl, boundary = "\r\n", message.boundary
    chunks = [_head(message, policy), nl]
    for part, body in zip(message.iter_parts(), message.bodies, strict=True):
        chunks += [f"--{boundary}{nl}", _head(part, policy), nl, body.replace("\n", nl), nl]
    chunks.append(f"--{boundary}--{nl}")
    return "".join(chunks).encode("utf-8" if utf8 else "ascii")


class _Composed(EmailMessage):
    """A message `build_message` composed, which `_wire_form` writes without the generator:
    its boundary and its parts' encoded bodies as composed (they are not changed after)."""

    boundary: str
    bodies: tuple[str, ...]


def _head(message: MIMEPart, policy: email.policy.EmailPolicy[EmailMessage]) -> str:
    """The header block as the generator writes it (a short text needs no folding)."""
    return "".join(
        _fold(name, value, policy) if isinstance(value, BaseHeader) else f"{name}: {value}\r\n"
        for name, value in message.raw_items()
    )


@functools.lru_cache(maxsize=64)
def _fold_fixed(
    name: str, header: BaseHeader, policy: email.policy.EmailPolicy[EmailMessage]
) -> str:
    # `name` in the key: a header equals any str of its text, whatever its name.
    folded: str = header.fold(policy=policy)
    return folded


def _fold(name: str, header: BaseHeader, policy: email.policy.EmailPolicy[EmailMessage]) -> str:
    # The sender's and subject's headers are the same objects for many mails: folded once.
    if name in ("From", "Subject"):
        return _fold_fixed(name, header, policy)
    folded: str = header.fold(policy=policy)
    return folded


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes/contexts: aiosmtplib wraps socket and TLS errors in its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


class Mailer:
    """Sends invitation mails through one SMTP relay, with verified TLS unless told otherwise.

    With `keep_alive` > 0, a session that sent a mail without any error is kept that many
    seconds for the next one (at most `max_idle` of them); `aclose` hangs them up. Zero: one
    connection per mail.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: TlsMode = "starttls",
        username: str | None = None,
        password: SecretStr | SecretSource | None = None,
        ca_bundle: Path | None = None,
        allow_insecure_auth: bool = False,
        timeout: float = 30.0,
        sender_email: str,
        sender_name: str | None = None,
        local_hostname: str | None = None,
        keep_alive: float = 0.0,
        max_idle: int = MAX_IDLE_SESSIONS,
    ) -> None:
        if tls not in ("starttls", "implicit", "none"):
            raise ConfigurationError(
                f"SMTP TLS mode {tls!r} is not one of starttls, implicit, none"
            )
        if not 1 <= port <= 65535:
            raise ConfigurationError(f"SMTP port {port} is out of range")
        if timeout <= 0:
            raise ConfigurationError("SMTP timeout must be positive")
        if username is not None and not username:
            username = None
        if username is not None and password is None:
            raise ConfigurationError(f"SMTP username {username!r} is set but no password")
        if password is not None and username is None:
            raise ConfigurationError("an SMTP password is set but no username")
        # Refused here, before any socket exists, so a misconfigured operator never sends a
        # password in clear text even once.
        if username is not None and tls == "none" and not allow_insecure_auth:
            raise ConfigurationError(
                f"SMTP login as {username!r} over a connection without TLS is refused; use "
                "starttls or implicit TLS, or set allow_insecure_auth for a relay on localhost"
            )
        # Checked now, as it would go out: a sender name that breaks the header fails at startup.
        _checked_sender(sender_name, sender_email)
        if password is not None:
            current_secret(password)  # read once now: an unreadable file fails at startup

        self.host = host
        self.port = port
        self.tls: TlsMode = tls
        self.username = username
        self._password = password
        self.ca_bundle = ca_bundle
        self.allow_insecure_auth = allow_insecure_auth
        self.timeout = timeout
        self.sender_email = sender_email
        self.sender_name = sender_name
        self.local_hostname = local_hostname
        self._tls_context = self._make_tls_context(ca_bundle) if tls != "none" else None
        self.keep_alive = keep_alive
        self.max_idle = max_idle
        self._idle: list[_Session] = []  # the most recently used last
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Mailer:
        """The mailer the operator's settings describe (reads the password file at every login,
        and once now)."""
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=settings.smtp_password_value if settings.smtp_username else None,
            ca_bundle=settings.smtp_ca_bundle,
            allow_insecure_auth=settings.smtp_allow_insecure_auth,
            timeout=settings.smtp_timeout_seconds,
            sender_email=settings.mail_from,
            sender_name=settings.mail_from_name,
            keep_alive=KEEP_ALIVE_SECONDS,
        )

    def __repr__(self) -> str:
        return (
            f"Mailer(host={self.host!r}, port={self.port}, tls={self.tls!r}, "
            f"username={self.username!r}, sender_email={self.sender_email!r})"
        )

    @staticmethod
    def _make_tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
        # create_default_context verifies the chain and the host name. A CA bundle replaces
        # the system trust store rather than extending it: whoever sets it pins the relay's CA.
        try:
            return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigurationError(
                f"cannot load the SMTP CA bundle {ca_bundle}: {reason}"
            ) from exc

    async def send(self, message: EmailMessage) -> None:
        """Deliver `message` to the relay; raise MailTemporaryError or MailRejectedError.

        On a kept session if there is one; should the relay have closed it before it accepted
        MAIL FROM, on a new one (nothing of the mail was accepted, so it goes out once). Once
        MAIL FROM was accepted, any failure is the caller's, as on a new session.
        """
        where = f"SMTP relay {self.host}:{self.port}"
        password = self._current_password()
        session = self._kept(password)
        if session is not None:
            try:
                await self._transfer(session, message, where, reused=True)
                return
            except _RelayClosedIt:
                log.debug("%s closed the kept session; sending on a new one", where)
        session = await self._open(where, password)
        await self._transfer(session, message, where, reused=False)

    async def verify(self) -> None:
        """Connect, secure and log in as `send` does, then hang up without sending (`doctor`)."""
        where = f"SMTP relay {self.host}:{self.port}"
        session = await self._open(where, self._current_password())
        await self._hang_up(session.client, session.sock)

    async def aclose(self) -> None:
        """Hang up the kept sessions (at shutdown)."""
        idle, self._idle = self._idle, []
        for session in idle:
            self._discard(session)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _current_password(self) -> str:
        # Read per mail: a rotated Secret takes effect without a restart. Read before any
        # socket exists, so an unreadable file costs the relay nothing.
        if self._password is None:
            return ""
        return current_secret(self._password).get_secret_value()

    async def _open(self, where: str, password: str) -> _Session:
        """A new session: connected, secured and logged in, or the translated failure."""
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.tls == "implicit",
            # We drive STARTTLS ourselves: aiosmtplib's default (None) would silently fall back
            # to plain text when the server does not offer it.
            start_tls=False,
            tls_context=self._tls_context,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )
        stage = "connect"
        sock: _Socket | None = None
        try:
            await client.connect()
            sock = client.get_transport_info("socket")
            if self.tls == "starttls":
                stage = "EHLO"
                await client.ehlo()
                if not client.supports_extension("starttls"):
                    # Not a hiccup: the relay is configured without TLS on this port, and
                    # waiting will not change that. Falling back to plain text is not an option.
                    raise MailSetupError(
                        f"{where} does not offer STARTTLS; configure TLS on the relay, use the "
                        "implicit TLS port, or set the SMTP TLS mode to none for a local relay"
                    )
                stage = "STARTTLS"
                await client.starttls()
            if self.username is not None:
                stage = "login"
                await client.ehlo()
                if not client.supports_extension("auth"):
                    raise MailSetupError(
                        f"{where} does not offer SMTP AUTH on this connection, but a username "
                        "is configured"
                    )
                await client.login(self.username, password)
            if client.is_ehlo_or_helo_needed:  # the extensions decide how a mail is sent
                stage = "EHLO"
                await client.ehlo()
        except MailError:
            await self._hang_up(client, sock)
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._hang_up(client, sock)
            raise self._translate(exc, stage, where, password) from exc
        except BaseException:
            client.close()
            raise
        return _Session(client, sock, password, asyncio.get_running_loop())

    async def _transfer(
        self, session: _Session, message: EmailMessage, where: str, *, reused: bool
    ) -> None:
        """One mail transaction (MAIL FROM, RCPT TO, DATA) on `session`, then keep or hang up.

        Driven step by step rather than with aiosmtplib's `send_message`, to know whether the
        relay accepted MAIL FROM before a kept session failed (`_RelayClosedIt`).
        """
        client = session.client
        stage = "MAIL FROM"
        try:
            recipients = extract_recipients(message)
            # A non-ASCII address (jörg@example.org) needs SMTPUTF8; a relay without it
            # answers with a clear refusal (SMTPNotSupported), as aiosmtplib's send_message.
            utf8 = not (self.sender_email + "".join(recipients)).isascii()
            if utf8 and not client.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported(
                    "an address containing non-ASCII characters needs SMTPUTF8, which the "
                    "relay does not offer"
                )
            options = ["SMTPUTF8"] if utf8 else []
            eight_bit = client.supports_extension("8BITMIME")
            if eight_bit:
                options.append("BODY=8BITMIME")
            data = _wire_form(message, utf8=utf8, eight_bit=eight_bit)
            if client.supports_extension("size"):
                options.insert(0, f"SIZE={len(data)}")
            encoding = "utf-8" if utf8 else "ascii"
            await client.mail(self.sender_email, options=options, encoding=encoding)
            stage = "RCPT TO"
            refused: list[aiosmtplib.SMTPRecipientRefused] = []
            for recipient in recipients:
                try:
                    await client.rcpt(recipient, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append(exc)
            if len(refused) == len(recipients):
                raise aiosmtplib.SMTPRecipientsRefused(refused)
            stage = "DATA"
            await client.data(data)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._hang_up(client, session.sock)  # never reused after an error
            if reused and stage == "MAIL FROM" and _closed_by_relay(exc):
                raise _RelayClosedIt from exc
            raise self._translate(exc, stage, where, session.password) from exc
        except BaseException:
            client.close()
            raise
        if log.isEnabledFor(logging.DEBUG):  # reading a header parses it: only when logged
            log.debug("mail %s accepted by %s", message["Message-ID"], where)
        # The relay accepted the message with its DATA reply; from here on nothing may fail,
        # or we would send the invitation twice.
        await self._keep(session)

    def _kept(self, password: str) -> _Session | None:
        """The most recently used kept session that can send now, if any."""
        loop = asyncio.get_running_loop()
        while self._idle:
            session = self._idle.pop()
            if session.expiry is not None:
                session.expiry.cancel()
            usable = session.loop is loop and session.client.is_connected
            if usable and session.password == password:
                return session
            self._discard(session)
        return None

    async def _keep(self, session: _Session) -> None:
        """Keep the session for the next mail, or hang up if none should be kept."""
        if self.keep_alive <= 0 or len(self._idle) >= self.max_idle:
            await self._hang_up(session.client, session.sock)
            return
        session.expiry = session.loop.call_later(self.keep_alive, self._expire, session)
        self._idle.append(session)

    def _expire(self, session: _Session) -> None:
        if session in self._idle:
            self._idle.remove(session)
            self._discard(session)

    def _discard(self, session: _Session) -> None:
        """Hang up a kept session in the background (its own loop's, if that still runs)."""
        if session.expiry is not None:
            session.expiry.cancel()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not session.loop:
            # Its loop ended (a test's, say) or is another: close without a goodbye.
            with contextlib.suppress(RuntimeError):
                session.client.close()
            return
        task = running.create_task(self._hang_up(session.client, session.sock))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _hang_up(self, client: aiosmtplib.SMTP, sock: _Socket | None) -> None:
        """QUIT politely, close, and wait (bounded) until the socket is really closed.

        After a refusal the session is still open: a QUIT lets the relay close first, and relays
        that count aborted sessions against a client do not. Closing a TLS connection finishes
        asynchronously (close_notify both ways); waiting for it keeps the socket from outliving
        this call, e.g. when the caller's event loop ends right after a failed send.
        """
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit(timeout=min(self.timeout, 5.0))
        client.close()
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.timeout, 1.0)
        # Neither asyncio nor aiosmtplib exposes an awaitable for "socket closed": poll, bounded.
        while sock.fileno() != -1 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def _translate(self, exc: BaseException, stage: str, where: str, secret: str) -> MailError:
        error = self._classify(exc, stage, where)
        text = str(error)
        if len(secret) >= 4 and secret in text:
            # Belt and braces: no library we use echoes the password, but a server reply
            # might, and this text ends up in an Invitation's status.
            cls = type(error)
            error = cls(text.replace(secret, "***"))
        return error

    def _classify(self, exc: BaseException, stage: str, where: str) -> MailError:
        cert_error = _find(exc, ssl.SSLCertVerificationError)
        if cert_error is not None:
            # Permanent, not temporary: a certificate we cannot verify does not heal by itself
            # (private CA not configured, wrong host name, expired certificate); retrying would
            # only hide the misconfiguration behind backoff.
            reason = cert_error.verify_message or cert_error.reason or "verification failed"
            return MailSetupError(
                f"{where}: TLS certificate is not trusted ({reason}); if the relay uses a private "
                "CA, set the SMTP CA bundle (ca_bundle / MATRIX_INVITE_SMTP_CA_BUNDLE)"
            )
        tls_error = _find(exc, ssl.SSLError)
        if tls_error is not None:
            return MailTemporaryError(
                f"{where}: TLS handshake failed during {stage} ({tls_error.reason or tls_error})"
            )

        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            reply = f"{exc.code} {exc.message}".strip()
            if 400 <= exc.code < 500:
                return MailTemporaryError(
                    f"{where}: SMTP login for user {self.username!r} temporarily refused: {reply}"
                )
            return MailSetupError(
                f"SMTP login refused for user {self.username!r} ({where}): {reply}"
            )
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            first = exc.recipients[0] if exc.recipients else None
            if first is None:
                return MailRejectedError(f"{where} refused all recipients")
            return _by_code(
                first.code, first.message, f"{where} refused recipient {first.recipient}"
            )
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            return _by_code(exc.code, exc.message, f"{where} refused sender {exc.sender}")
        if isinstance(exc, aiosmtplib.SMTPDataError):
            return _by_code(exc.code, exc.message, f"{where} refused the message")
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return _by_code(exc.code, exc.message, f"{where} answered during {stage}")
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            return MailRejectedError(f"{where} cannot carry this message: {exc.message}")
        if isinstance(exc, TimeoutError):
            return MailTemporaryError(f"{where}: timed out during {stage} after {self.timeout:g}s")
        if isinstance(exc, OSError):
            if _find(exc, ConnectionRefusedError) is not None:
                return MailTemporaryError(f"{where}: connection refused")
            detail = next(
                (e.strerror for e in _chain(exc) if isinstance(e, OSError) and e.strerror),
                exc.message if isinstance(exc, aiosmtplib.SMTPException) else str(exc),
            )
            return MailTemporaryError(f"{where}: connection failed during {stage} ({detail})")
        if isinstance(exc, aiosmtplib.SMTPException):
            return MailTemporaryError(f"{where}: SMTP error during {stage}: {exc.message}")
        return MailTemporaryError(
            f"{where}: unexpected failure during {stage}: {type(exc).__name__}"
        )


def _closed_by_relay(exc: BaseException) -> bool:
    """Whether the relay had ended the session: disconnected, or 421 (closing the channel)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    return isinstance(exc, ConnectionError | aiosmtplib.SMTPServerDisconnected)


def _by_code(code: int, reply: str, what: str) -> MailError:
    text = f"{what}: {code} {reply}".strip()
    if 400 <= code < 500:
        return MailTemporaryError(text)
    if 500 <= code < 600:
        return MailRejectedError(text)
    # Anything else is the relay misbehaving; assume it may recover.
    return MailTemporaryError(text)
