"""A test double of Matrix Authentication Service: OAuth token endpoint and registration tokens
(users, user emails and personal sessions live in `mas_accounts.py`).

Owns a real HTTP server (aiohttp, in a background thread with its own event loop) that copies
what MAS 1.22 does for the operator's calls: the client_credentials grant at `/oauth2/token`,
discovery, and every `/api/admin/v1/user-registration-tokens` endpoint with MAS's JSON:API
envelopes, status codes and quirks (409 on a duplicate value, 400 on a repeated revoke,
plain-text answers to unparseable JSON, 400 for a missing Authorization header). Every JSON
answer on an Admin API path is checked against the pinned OpenAPI spec; violations collect in
`spec_violations`. Tests steer it through thread-safe hooks (clock, faults, simulated
registrations) or, from another process, through the `/__double__/` control API.

Run standalone: `python -m tests.doubles.mas --port 8081 --client-id ID --client-secret-file F`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import re
import secrets
import signal
import ssl
import string
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import jsonschema
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

MAS_VERSION = "1.22.0"
ADMIN_SCOPE = "urn:mas:admin"
DEFAULT_CLIENT_ID = "01J44RKQYM4G3TNVANTMTDYTX6"
DEFAULT_CLIENT_SECRET = "mas-double-client-secret"
DEFAULT_ACCESS_TOKEN_LIFETIME = 300
DEFAULT_PAGE_SIZE = 10

ADMIN_PREFIX = "/api/admin/v1"
TOKENS_PATH = f"{ADMIN_PREFIX}/user-registration-tokens"
TOKEN_PATH = f"{TOKENS_PATH}/{{id}}"
REVOKE_PATH = f"{TOKEN_PATH}/revoke"
UNREVOKE_PATH = f"{TOKEN_PATH}/unrevoke"
VERSION_PATH = f"{ADMIN_PREFIX}/version"
SITE_CONFIG_PATH = f"{ADMIN_PREFIX}/site-config"
PROVIDERS_PATH = f"{ADMIN_PREFIX}/upstream-oauth-providers"
OAUTH_TOKEN_PATH = "/oauth2/token"
DISCOVERY_PATH = "/.well-known/openid-configuration"
CONTROL_PREFIX = "/__double__"

SPEC_ENV = "MAS_ADMIN_API_SPEC"

_TEMPLATE_PATTERNS = [
    (template, re.compile(re.escape(template).replace(re.escape("{id}"), "[^/]+")))
    for template in (UNREVOKE_PATH, REVOKE_PATH, TOKEN_PATH, TOKENS_PATH)
]

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
FaultTarget = Literal["admin", "token", "discovery", "any"]
WriteMoment = Literal["before", "after"]
RouteKind = Literal["admin", "token", "discovery", "control", "other"]
AdminApiServing = Literal["served", "absent", "web-page"]

JsonObject = dict[str, Any]


# --- ULIDs ---------------------------------------------------------------------------------

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def encode_ulid(value: int) -> str:
    return "".join(CROCKFORD[(value >> (5 * (25 - i))) & 31] for i in range(26))


def normalize_ulid(text: str) -> str | None:
    """The canonical (upper-case) ULID, or None when `text` is not one."""
    upper = text.upper()
    return upper if _ULID_RE.match(upper) else None


class UlidGenerator:
    """Monotonic ULIDs: 48-bit milliseconds + 80 random bits, strictly increasing.

    Within one millisecond, or when the injected clock goes backwards, the previous value is
    incremented, so ids keep sorting in creation order as MAS's do.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def new(self, now: dt.datetime) -> str:
        millis = max(int(now.timestamp() * 1000), 0)
        with self._lock:
            if millis > self._last >> 80:
                value = (millis << 80) | secrets.randbits(80)
            else:
                value = self._last + 1
            self._last = value
        return encode_ulid(value)


# --- time ----------------------------------------------------------------------------------

_RFC3339_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> dt.datetime | None:
    """An aware UTC datetime truncated to microseconds (as Postgres stores it), or None."""
    match = _RFC3339_RE.match(text)
    if match is None:
        return None
    date, clock, fraction, offset = match.groups()
    fraction = (fraction or ".0")[:7]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = dt.datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}")
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC)


def format_rfc3339(when: dt.datetime) -> str:
    """Like chrono's AutoSi: no fraction when whole seconds, else milli or micro precision."""
    when = when.astimezone(dt.UTC)
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond == 0:
        return base + "Z"
    if when.microsecond % 1000 == 0:
        return f"{base}.{when.microsecond // 1000:03d}Z"
    return f"{base}.{when.microsecond:06d}Z"


def _real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the OpenAPI contract ------------------------------------------------------------------


def default_spec_path() -> Path:
    override = os.environ.get(SPEC_ENV)
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "reference" / "mas" / "admin-api-spec.json"


def _json_pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _check_date_time(instance: object) -> bool:
    return not isinstance(instance, str) or parse_rfc3339(instance) is not None


def _closed_world(node: Any) -> Any:
    """The spec with every object schema closed to properties it does not name.

    MAS serialises exactly the fields its schema describes, so an extra field in the double
    is a bug (usually a typo) the plain spec would let through.
    """
    if isinstance(node, list):
        return [_closed_world(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed_world(value) for key, value in node.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed.setdefault("unevaluatedProperties", False)
    return closed


class AdminApiSpec:
    """Validates bodies against the MAS Admin API OpenAPI 3.1 document (JSON Schema 2020-12)."""

    URI = "urn:mas:admin-api-spec"

    def __init__(self, path: Path | None = None, *, closed_world: bool = True) -> None:
        self.path = path or default_spec_path()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"The MAS Admin API spec is missing at {self.path}: the double validates every "
                f"answer against it. Put admin-api-spec.json there or set {SPEC_ENV}."
            )
        self.document: JsonObject = json.loads(self.path.read_text(encoding="utf-8"))
        contents = _closed_world(self.document) if closed_world else self.document
        resource = Resource.from_contents(contents, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(self.URI, resource)
        self._format_checker = jsonschema.FormatChecker()
        self._format_checker.checks("date-time")(_check_date_time)
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self._lock = threading.Lock()

    def _validator(self, pointer: str) -> jsonschema.Draft202012Validator:
        with self._lock:
            validator = self._validators.get(pointer)
            if validator is None:
                validator = jsonschema.Draft202012Validator(
                    {"$ref": f"{self.URI}#{pointer}"},
                    registry=self._registry,
                    format_checker=self._format_checker,
                )
                self._validators[pointer] = validator
            return validator

    def _operation(self, method: str, path_template: str) -> JsonObject | None:
        operation = self.document["paths"].get(path_template, {}).get(method.lower())
        return operation if isinstance(operation, dict) else None

    def _errors(self, pointer: str, body: object, where: str) -> list[str]:
        return [
            f"{where}: {error.message} at {error.json_path}"
            for error in self._validator(pointer).iter_errors(body)
        ]

    def validate_response(
        self, method: str, path_template: str, status: int, body: object
    ) -> list[str]:
        """Violations of the spec by this JSON response body (empty when it conforms)."""
        where = f"{method} {path_template} -> {status}"
        operation = self._operation(method, path_template)
        if operation is None:
            return [f"{where}: operation not in the spec"]
        documented = operation.get("responses", {}).get(str(status))
        if documented is not None:
            if "application/json" not in documented.get("content", {}):
                return [f"{where}: the spec documents no JSON body for this status"]
            pointer = _json_pointer(
                "paths",
                path_template,
                method.lower(),
                "responses",
                str(status),
                "content",
                "application/json",
                "schema",
            )
        elif status >= 400:
            # MAS answers undocumented errors (409, 401, 500...) with its one error envelope.
            pointer = _json_pointer("components", "schemas", "ErrorResponse")
        else:
            return [f"{where}: success status not documented in the spec"]
        return self._errors(pointer, body, where)

    def validate_request(self, method: str, path_template: str, body: object) -> list[str]:
        """Violations of the spec's request body schema by a JSON body a client sent."""
        where = f"{method} {path_template} request"
        operation = self._operation(method, path_template)
        if operation is None or "requestBody" not in operation:
            return [f"{where}: the spec takes no request body here"]
        pointer = _json_pointer(
            "paths",
            path_template,
            method.lower(),
            "requestBody",
            "content",
            "application/json",
            "schema",
        )
        return self._errors(pointer, body, where)


@functools.lru_cache(maxsize=4)
def load_spec(path: Path | None = None) -> AdminApiSpec:
    return AdminApiSpec(path)


# --- stored state --------------------------------------------------------------------------


@dataclasses.dataclass
class StoredToken:
    id: str
    token: str
    usage_limit: int | None
    times_used: int
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def valid(self, now: dt.datetime) -> bool:
        return (
            self.revoked_at is None
            and not self.expired(now)
            and (self.usage_limit is None or self.times_used < self.usage_limit)
        )

    def attributes(self, now: dt.datetime) -> JsonObject:
        return {
            "token": self.token,
            "valid": self.valid(now),
            "usage_limit": self.usage_limit,
            "times_used": self.times_used,
            "created_at": format_rfc3339(self.created_at),
            "last_used_at": _optional_time(self.last_used_at),
            "expires_at": _optional_time(self.expires_at),
            "revoked_at": _optional_time(self.revoked_at),
        }

    def snapshot(self, now: dt.datetime) -> JsonObject:
        return {
            "id": self.id,
            "token": self.token,
            "valid": self.valid(now),
            "usage_limit": self.usage_limit,
            "times_used": self.times_used,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def _optional_time(when: dt.datetime | None) -> str | None:
    return None if when is None else format_rfc3339(when)


@dataclasses.dataclass
class Client:
    client_id: str
    secret: str
    admin: bool
    auth_method: ClientAuthMethod | None


@dataclasses.dataclass
class AccessToken:
    client_id: str
    scope: frozenset[str]
    expires_at: dt.datetime


@dataclasses.dataclass
class Fault:
    status: int
    target: FaultTarget
    commit: bool
    retry_after: float | str | None  # seconds, or a header value as it is (an HTTP date)
    text: str | None
    method: str | None = None


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    method: str
    path_template: str
    path: str
    status: int  # 0: the connection was dropped without an answer
    seconds: float
    user_agent: str | None = None


class _Reply(Exception):
    """Ends a handler early with a finished response (an error, usually)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _error_response(
    status: int, *titles: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"errors": [{"title": title} for title in titles]}, status=status, headers=headers
    )


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _not_the_admin_api(how: AdminApiServing) -> web.Response:
    if how == "absent":
        return web.Response(status=404)
    page = "<!doctype html><html><head><title>Element</title></head><body></body></html>"
    return web.Response(status=200, text=page, content_type="text/html")


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


# --- the double ----------------------------------------------------------------------------


class MasDouble:
    """MAS in a thread. `with MasDouble() as mas: ... mas.url ...`; every hook is thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        client_auth_method: ClientAuthMethod | None = None,
        admin_client: bool = True,
        access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
        clock: Callable[[], dt.datetime] | None = None,
        public_base: str | None = None,
        spec: AdminApiSpec | None = None,
        version: str = MAS_VERSION,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port
        self.access_token_lifetime = access_token_lifetime
        self.public_base = public_base
        self.version = version
        self.spec = spec if spec is not None else load_spec()
        self.spec_violations: list[str] = []
        self.request_violations: list[str] = []
        self._lock = threading.RLock()
        self._clients: dict[str, Client] = {}
        self.add_client(
            client_id, client_secret, admin=admin_client, auth_method=client_auth_method
        )
        self._base_clock = clock or _real_now
        self._pinned_now: dt.datetime | None = None
        self._clock_offset = dt.timedelta()
        self._ulids = UlidGenerator()
        self._tokens: dict[str, StoredToken] = {}
        self._access_tokens: dict[str, AccessToken] = {}
        self.access_tokens_issued = 0
        self._log: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._delays: dict[FaultTarget, float] = {}
        self._drops = 0
        self._manglers: list[Callable[[Any], Any]] = []
        self._write_hooks: list[tuple[WriteMoment, str | None, Callable[[], None]]] = []
        self._admin_api: AdminApiServing = "served"
        # What MAS 1.22 answers at /site-config when configured as docs/install-ess.md says.
        self.site_config: JsonObject = dict(GUIDE_SITE_CONFIG)
        self._providers: dict[str, UpstreamProvider] = {}
        from tests.doubles.mas_accounts import MasAccounts  # it imports this module

        #: Users, user emails and personal sessions (tests/doubles/mas_accounts.py).
        self.accounts = MasAccounts(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("MasDouble already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="mas-double", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=15):
            raise RuntimeError("MasDouble did not start within 15 s")
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"MasDouble could not start: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:
            failure.append(exc)
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("MasDouble is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def issuer(self) -> str:
        return (self.public_base or self.url).rstrip("/") + "/"

    @property
    def token_endpoint(self) -> str:
        return (self.public_base or self.url).rstrip("/") + OAUTH_TOKEN_PATH

    # --- hooks: clients and clock ------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        secret: str,
        *,
        admin: bool = False,
        auth_method: ClientAuthMethod | None = None,
    ) -> None:
        """Register a static client; `admin` lists it in policy.data.admin_clients.

        `auth_method` None accepts both basic and post; MAS pins one per client.
        """
        with self._lock:
            self._clients[client_id] = Client(client_id, secret, admin, auth_method)

    def now(self) -> dt.datetime:
        with self._lock:
            base = self._pinned_now if self._pinned_now is not None else self._base_clock()
            return base + self._clock_offset

    def set_clock(self, when: dt.datetime | None) -> None:
        """Freeze the double's clock at `when` (aware); None goes back to the running clock."""
        if when is not None and when.tzinfo is None:
            raise ValueError("set_clock needs an aware datetime")
        with self._lock:
            self._pinned_now = None if when is None else when.astimezone(dt.UTC)
            self._clock_offset = dt.timedelta()

    def set_clock_offset(self, seconds: float) -> None:
        """Run the double's clock `seconds` ahead of the real one (negative: behind), as a MAS
        host whose clock disagrees with the operator's; 0 puts them in agreement again."""
        with self._lock:
            self._clock_offset = dt.timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._clock_offset += dt.timedelta(seconds=seconds)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is now expired (MAS answers 401 to it)."""
        with self._lock:
            past = self.now() - dt.timedelta(seconds=1)
            for access in self._access_tokens.values():
                access.expires_at = past

    # --- hooks: registration tokens ----------------------------------------------------------

    def tokens(self) -> list[JsonObject]:
        """A snapshot of every stored token, ordered by id, with the token value in clear."""
        with self._lock:
            now = self.now()
            return [t.snapshot(now) for t in sorted(self._tokens.values(), key=lambda t: t.id)]

    def token(self, token_id: str) -> JsonObject | None:
        with self._lock:
            stored = self._tokens.get(token_id)
            return None if stored is None else stored.snapshot(self.now())

    def add_token(
        self,
        token: str | None = None,
        *,
        usage_limit: int | None = None,
        expires_at: dt.datetime | None = None,
        revoked: bool = False,
        times_used: int = 0,
    ) -> JsonObject:
        """Seed a token directly in the store (no HTTP, not logged)."""
        with self._lock:
            if token is not None and any(t.token == token for t in self._tokens.values()):
                raise ValueError("a token with this value already exists")
            stored = self._create(token, usage_limit, expires_at)
            stored.times_used = times_used
            if revoked:
                stored.revoked_at = stored.created_at
            return stored.snapshot(self.now())

    def simulate_registration(self, token_id: str, *, require_valid: bool = False) -> JsonObject:
        """Someone completed a registration with this token: times_used + 1, last_used_at now.

        MAS checks validity when the token is typed in, not when the registration completes, so
        concurrent completions can exceed the limit: by default this does not check either.
        """
        with self._lock:
            stored = self._tokens.get(token_id)
            if stored is None:
                raise KeyError(token_id)
            now = self.now()
            if require_valid and not stored.valid(now):
                raise ValueError(f"registration token {token_id} is not valid")
            stored.times_used += 1
            stored.last_used_at = now
            return stored.snapshot(now)

    def delete_all(self) -> None:
        """Lose every token, as a database restore from before their creation would."""
        with self._lock:
            self._tokens.clear()

    # --- hooks: faults -------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        target: FaultTarget = "admin",
        commit: bool = False,
        retry_after: float | str | None = None,
        text: str | None = None,
        method: str | None = None,
    ) -> None:
        """The next `n` requests to `target` answer `status` with MAS's error envelope.

        With `method`, only requests of that method take the fault: a sync pass's GET running
        at the same moment must not swallow a fault meant for a create.

        With `commit`, the request is carried out first and only the answer is replaced: the
        500 MAS gives when two creates of one value race, after the other one won. With
        `text`, the answer is that plain text instead, as MAS's body parser rejections are.
        """
        with self._lock:
            self._faults.extend(
                Fault(status, target, commit, retry_after, text, method) for _ in range(n)
            )

    def serve_admin_api(self, how: AdminApiServing) -> None:
        """How Admin API requests are answered: "served" as ever; "absent" as a MAS listener
        without the adminapi resource does (404, no body), the answer a wrong port gets;
        "web-page" with an HTML page (200), as a web server or login page would. OAuth and
        discovery are unaffected."""
        with self._lock:
            self._admin_api = how

    def delay(self, seconds: float, *, target: FaultTarget = "admin") -> None:
        """Hold every later request to `target` for `seconds` before handling it (0 clears)."""
        with self._lock:
            if seconds > 0:
                self._delays[target] = seconds
            else:
                self._delays.pop(target, None)

    def drop_response_after_commit_next(self, n: int = 1) -> None:
        """The next `n` successful Admin API writes take effect, then the connection closes
        without an answer."""
        with self._lock:
            self._drops += n

    def mangle_next_response(self, mangle: Callable[[Any], Any]) -> None:
        """Pass the next Admin API JSON answer through `mangle` before it is checked and sent."""
        with self._lock:
            self._manglers.append(mangle)

    def on_next_write(
        self, action: Callable[[], None], *, when: WriteMoment, path: str | None = None
    ) -> None:
        """Run `action` once, at the next Admin API write (POST/PUT).

        "before": the write never takes effect (as if the sender died before it arrived);
        "after": it took effect and the answer never leaves. Crash tests kill the operator
        here to hit the exact step boundary. With `path` (a template such as TOKENS_PATH), only
        a write to that path counts: a revoke before it passes by."""
        with self._lock:
            self._write_hooks.append((when, path, action))

    def _run_write_hook(
        self, kind: RouteKind, method: str, moment: WriteMoment, template: str
    ) -> bool:
        """Whether a hook ran (the write is then cut off)."""
        if kind != "admin" or method not in ("POST", "PUT"):
            return False
        with self._lock:
            index = next(
                (
                    i
                    for i, (w, path, _) in enumerate(self._write_hooks)
                    if w == moment and path in (None, template)
                ),
                None,
            )
            action = self._write_hooks.pop(index)[2] if index is not None else None
        if action is None:
            return False
        action()
        return True

    def clear_faults(self) -> None:
        with self._lock:
            self._write_hooks.clear()
            self._faults.clear()
            self._delays.clear()
            self._drops = 0
            self._manglers.clear()

    # --- hooks: observation ------------------------------------------------------------------

    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def request_counts(self) -> Counter[tuple[str, str, int]]:
        """Requests by (method, path template, status)."""
        with self._lock:
            return Counter((r.method, r.path_template, r.status) for r in self._log)

    def request_count(
        self, method: str | None = None, path: str | None = None, status: int | None = None
    ) -> int:
        """Requests matching every given criterion; `path` is a template like TOKENS_PATH."""
        with self._lock:
            return sum(
                1
                for r in self._log
                if method in (None, r.method)
                and path in (None, r.path_template)
                and status in (None, r.status)
            )

    def reset_request_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- hooks: what MAS's configuration says --------------------------------------------------

    def configure_site(self, **changes: Any) -> None:
        """Change what /site-config answers, as a changed MAS config and a restart would."""
        unknown = set(changes) - set(GUIDE_SITE_CONFIG)
        if unknown:
            raise ValueError(f"MAS's site-config has no {', '.join(sorted(unknown))}")
        with self._lock:
            self.site_config.update(changes)

    def configure_upstream_only(
        self, human_name: str = "Authentik", *, registration_token_required: bool = True
    ) -> str:
        """MAS as mas/FACTS.md observed it with an upstream provider only: MAS's own passwords
        off (site-config then says false for every password and token flag) and exactly one
        enabled provider; its id."""
        self.configure_site(
            password_registration_enabled=False,
            password_registration_token_required=False,
            registration_token_required=False,
            password_login_enabled=False,
        )
        return self.add_upstream_provider(
            human_name, registration_token_required=registration_token_required
        )

    def add_upstream_provider(
        self,
        human_name: str | None,
        *,
        registration_token_required: bool,
        enabled: bool = True,
        issuer: str | None = "https://id.example.org/application/o/matrix/",
    ) -> str:
        """An `upstream_oauth2.providers` entry as MAS syncs it into its database; its id."""
        with self._lock:
            now = self.now()
            provider = UpstreamProvider(
                id=self._ulids.new(now),
                human_name=human_name,
                issuer=issuer,
                created_at=now,
                disabled_at=None if enabled else now,
                registration_token_required=registration_token_required,
            )
            self._providers[provider.id] = provider
            return provider.id

    # --- HTTP plumbing -------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(DISCOVERY_PATH, self._discovery)
        r.add_post(OAUTH_TOKEN_PATH, self._oauth_token)
        r.add_get(VERSION_PATH, self._version)
        r.add_get(SITE_CONFIG_PATH, self._site_config)
        r.add_get(PROVIDERS_PATH, self._list_providers)
        r.add_get(TOKENS_PATH, self._list_tokens)
        r.add_post(TOKENS_PATH, self._create_token)
        r.add_get(TOKEN_PATH, self._get_token)
        r.add_put(TOKEN_PATH, self._update_token)
        r.add_post(REVOKE_PATH, self._revoke_token)
        r.add_post(UNREVOKE_PATH, self._unrevoke_token)
        self.accounts.add_routes(r)
        c = CONTROL_PREFIX
        r.add_get(f"{c}/tokens", self._control_tokens)
        r.add_post(f"{c}/tokens", self._control_add_token)
        r.add_delete(f"{c}/tokens", self._control_delete_all)
        r.add_get(f"{c}/tokens/{{id}}", self._control_token)
        r.add_post(f"{c}/tokens/{{id}}/use", self._control_use_token)
        r.add_post(f"{c}/tokens/{{id}}/sign-up", self._control_sign_up)
        r.add_get(f"{c}/clock", self._control_clock)
        r.add_post(f"{c}/clock", self._control_set_clock)
        r.add_post(f"{c}/expire-access-tokens", self._control_expire_access_tokens)
        r.add_post(f"{c}/faults", self._control_faults)
        r.add_delete(f"{c}/faults", self._control_clear_faults)
        r.add_get(f"{c}/requests", self._control_requests)
        r.add_get(f"{c}/spec-violations", self._control_spec_violations)

    @staticmethod
    def _template_of(request: web.Request) -> str:
        resource = request.match_info.route.resource
        if resource is not None:
            return resource.canonical
        # Unrouted (405, 404): still count it under the template the path fits, if any.
        for template, pattern in _TEMPLATE_PATTERNS:
            if pattern.fullmatch(request.path):
                return template
        return request.path

    @staticmethod
    def _kind_of(template: str) -> RouteKind:
        if template.startswith(ADMIN_PREFIX):
            return "admin"
        if template == OAUTH_TOKEN_PATH:
            return "token"
        if template == DISCOVERY_PATH:
            return "discovery"
        if template.startswith(CONTROL_PREFIX):
            return "control"
        return "other"

    def _take_fault(self, kind: RouteKind, method: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.target in ("any", kind) and fault.method in (None, method):
                    return self._faults.pop(index)
            return None

    async def _hold(self, kind: RouteKind) -> None:
        with self._lock:
            seconds = next(
                (s for target, s in self._delays.items() if target in ("any", kind)), 0.0
            )
        if seconds and self._stopping is not None:
            # Waiting on the stop event lets stop() end a long delay at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        template = self._template_of(request)
        kind = self._kind_of(template)
        started = time.perf_counter()
        status = 0
        try:
            if kind == "control":
                response = await self._run(handler, request)
                status = response.status
                return response
            await self._hold(kind)
            with self._lock:
                serving = self._admin_api
            if kind == "admin" and serving != "served":
                response = _not_the_admin_api(serving)
                status = response.status
                return response
            fault = self._take_fault(kind, request.method)
            if fault is not None and not fault.commit:
                response = self._fault_response(fault, kind)
            else:
                cut = self._run_write_hook(kind, request.method, "before", template)
                if not cut:
                    response = await self._run(handler, request)
                if cut or (
                    200 <= response.status < 300
                    and self._run_write_hook(kind, request.method, "after", template)
                ):
                    if request.transport is not None:
                        request.transport.close()
                    raise asyncio.CancelledError
                if fault is not None:
                    response = self._fault_response(fault, kind)
                elif self._should_drop(kind, request.method, response.status):
                    if request.transport is not None:
                        request.transport.close()
                    # aiohttp gives up on a cancelled handler without writing an answer.
                    raise asyncio.CancelledError
            if kind == "admin":
                response = self._check_answer(request.method, template, response)
            status = response.status
            return response
        finally:
            with self._lock:
                self._log.append(
                    RequestRecord(
                        request.method,
                        template,
                        request.path,
                        status,
                        time.perf_counter() - started,
                        request.headers.get("User-Agent"),
                    )
                )

    @staticmethod
    async def _run(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request: web.Request
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Reply as reply:
            return reply.response
        except web.HTTPException as exc:
            return web.Response(
                status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers
            )

    def _should_drop(self, kind: RouteKind, method: str, status: int) -> bool:
        with self._lock:
            writes = kind == "admin" and method in ("POST", "PUT") and 200 <= status < 300
            if writes and self._drops > 0:
                self._drops -= 1
                return True
            return False

    @staticmethod
    def _fault_response(fault: Fault, kind: RouteKind) -> web.Response:
        headers = {}
        if fault.retry_after is not None:
            retry_after = fault.retry_after
            headers["Retry-After"] = (
                retry_after if isinstance(retry_after, str) else str(int(retry_after))
            )
        if fault.text is not None:
            return web.Response(
                status=fault.status, text=fault.text, content_type="text/plain", headers=headers
            )
        if kind in ("token", "discovery"):
            return web.json_response(
                {"error": "server_error", "error_description": "injected fault"},
                status=fault.status,
                headers=headers,
            )
        return _error_response(fault.status, "Injected fault (test double)", headers=headers)

    def _check_answer(
        self, method: str, template: str, response: web.StreamResponse
    ) -> web.StreamResponse:
        if not isinstance(response, web.Response) or response.content_type != "application/json":
            if 200 <= response.status < 300:
                with self._lock:
                    self.spec_violations.append(f"{method} {template}: non-JSON success answer")
            return response
        assert isinstance(response.body, bytes)
        body = json.loads(response.body)
        with self._lock:
            mangle = self._manglers.pop(0) if self._manglers else None
        if mangle is not None:
            body = mangle(body)
            replacement = web.json_response(body, status=response.status)
            for name, value in response.headers.items():
                if name.lower() not in ("content-type", "content-length"):
                    replacement.headers[name] = value
            response = replacement
        violations = self.spec.validate_response(method, template, response.status, body)
        if violations:
            with self._lock:
                self.spec_violations.extend(violations)
        return response

    # --- OAuth 2.0 -----------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        base = self.issuer
        return web.json_response(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}authorize",
                "token_endpoint": self.token_endpoint,
                "jwks_uri": f"{base}oauth2/keys.json",
                "registration_endpoint": f"{base}oauth2/registration",
                "scopes_supported": ["openid", "email", ADMIN_SCOPE],
                "response_types_supported": ["code", "id_token", "code id_token"],
                "grant_types_supported": [
                    "authorization_code",
                    "refresh_token",
                    "client_credentials",
                    "urn:ietf:params:oauth:grant-type:device_code",
                ],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "client_secret_jwt",
                    "private_key_jwt",
                    "none",
                ],
            }
        )

    async def _oauth_token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "Expected a form-encoded body")
        form = await request.post()
        header = request.headers.get("Authorization")
        form_id, form_secret = form.get("client_id"), form.get("client_secret")
        method: ClientAuthMethod
        if header is not None:
            if form_secret is not None:
                return _oauth_error(400, "invalid_request", "Multiple client authentications")
            credentials = _basic_credentials(header)
            if credentials is None:
                return _oauth_error(400, "invalid_request", "Malformed Authorization header")
            client_id, secret = credentials
            method = "client_secret_basic"
        elif isinstance(form_id, str) and isinstance(form_secret, str):
            client_id, secret = form_id, form_secret
            method = "client_secret_post"
        else:
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        with self._lock:
            client = self._clients.get(client_id)
        if (
            client is None
            or not secrets.compare_digest(client.secret.encode(), secret.encode())
            or client.auth_method not in (None, method)
        ):
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "Unsupported grant type")
        scope_text = form.get("scope")
        scope = frozenset(scope_text.split()) if isinstance(scope_text, str) else frozenset()
        if ADMIN_SCOPE not in scope or not client.admin:
            return _oauth_error(403, "invalid_scope", "The request scope is not allowed")
        access_token = "mat_" + "".join(
            secrets.choice(string.ascii_letters + string.digits) for _ in range(30)
        )
        with self._lock:
            self._access_tokens[access_token] = AccessToken(
                client.client_id,
                scope,
                self.now() + dt.timedelta(seconds=self.access_token_lifetime),
            )
            self.access_tokens_issued += 1
        return web.json_response(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": self.access_token_lifetime,
                "scope": " ".join(sorted(scope)),
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _authorize(self, request: web.Request) -> None:
        """MAS's CallContext: 400 for a missing or malformed header, 401 for a bad token."""
        header = request.headers.get("Authorization")
        if header is None:
            raise _Reply(_error_response(400, "Missing authorization header"))
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _Reply(_error_response(400, "Invalid authorization header"))
        value = value.strip()
        if not value.startswith("mat_"):
            raise _Reply(_error_response(401, "Invalid type of access token"))
        with self._lock:
            access = self._access_tokens.get(value)
            now = self.now()
        if access is None:
            raise _Reply(_error_response(401, "Unknown access token"))
        if now >= access.expires_at:
            raise _Reply(_error_response(401, "Access token expired"))
        if ADMIN_SCOPE not in access.scope:
            raise _Reply(_error_response(401, "Missing urn:mas:admin scope"))

    # --- Admin API -----------------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.json_response({"version": self.version})

    async def _site_config(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            return web.json_response(dict(self.site_config))

    async def _list_providers(self, request: web.Request) -> web.Response:
        self._authorize(request)
        raw = request.query.get("filter[enabled]")
        if raw not in (None, "true", "false"):
            return _error_response(400, "Invalid filter parameters")
        try:
            page = _Pagination.from_query(request.query)
        except ValueError as exc:
            return _error_response(400, *exc.args)
        base = PROVIDERS_PATH + (f"?filter[enabled]={raw}" if raw is not None else "")
        if page.include_count != "true":
            base += ("&" if "?" in base else "?") + f"count={page.include_count}"
        with self._lock:
            matching = [
                p
                for p in sorted(self._providers.values(), key=lambda p: p.id)
                if raw is None or (p.disabled_at is None) == (raw == "true")
            ]
        window = [p for p in matching if page.after is None or p.id > page.after]
        edges = window[: page.count]
        links: JsonObject = {"self": page.url(base)}
        if len(window) > page.count:
            links["next"] = dataclasses.replace(page, after=edges[-1].id).url(base)
        answer: JsonObject = {}
        if page.include_count in ("true", "only"):
            answer["meta"] = {"count": len(matching)}
        if page.include_count != "only":
            answer["data"] = [
                {
                    "type": "upstream-oauth-provider",
                    "id": p.id,
                    "attributes": p.attributes(),
                    "links": {"self": f"{PROVIDERS_PATH}/{p.id}"},
                    "meta": {"page": {"cursor": p.id}},
                }
                for p in edges
            ]
        answer["links"] = links
        return web.json_response(answer)

    def _path_id(self, request: web.Request) -> str:
        raw = request.match_info["id"]
        token_id = normalize_ulid(raw)
        if token_id is None:
            raise _Reply(
                _error_response(
                    400,
                    "Invalid ULID in path",
                    f"Cannot parse `{raw}` to a `Ulid`",
                )
            )
        return token_id

    async def _json_body(
        self, request: web.Request, template: str, fields: dict[str, str]
    ) -> JsonObject:
        """Parse the body as axum's Json extractor does, with its plain-text rejections."""
        if request.content_type != "application/json" and not request.content_type.endswith(
            "+json"
        ):
            raise _Reply(_plain(415, "Expected request with `Content-Type: application/json`"))
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _Reply(_plain(400, f"Failed to parse the request body as JSON: {exc}")) from exc
        if not isinstance(body, dict):
            raise _Reply(
                _plain(
                    422,
                    "Failed to deserialize the JSON body into the target type: "
                    f"invalid type: {_json_kind(body)}, expected a map",
                )
            )
        for name, kind in fields.items():
            if name in body and body[name] is not None and not _is_kind(body[name], kind):
                raise _Reply(
                    _plain(
                        422,
                        "Failed to deserialize the JSON body into the target type: "
                        f"{name}: invalid type: {_json_kind(body[name])}, expected {kind}",
                    )
                )
        with self._lock:
            self.request_violations.extend(
                self.spec.validate_request(request.method, template, body)
            )
        return body

    def _resource(self, stored: StoredToken, now: dt.datetime) -> JsonObject:
        return {
            "type": "user-registration_token",
            "id": stored.id,
            "attributes": stored.attributes(now),
            "links": {"self": f"{TOKENS_PATH}/{stored.id}"},
        }

    def _single(
        self, stored: StoredToken, self_link: str | None = None, status: int = 200
    ) -> web.Response:
        now = self.now()
        return web.json_response(
            {
                "data": self._resource(stored, now),
                "links": {"self": self_link or f"{TOKENS_PATH}/{stored.id}"},
            },
            status=status,
        )

    def _create(
        self, token: str | None, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> StoredToken:
        now = self.now()
        if token is None:
            alphabet = string.ascii_letters + string.digits
            token = "".join(secrets.choice(alphabet) for _ in range(12))
        stored = StoredToken(
            id=self._ulids.new(now),
            token=token,
            usage_limit=usage_limit,
            times_used=0,
            created_at=now,
            expires_at=expires_at,
        )
        self._tokens[stored.id] = stored
        return stored

    def _lookup(self, token_id: str) -> StoredToken:
        stored = self._tokens.get(token_id)
        if stored is None:
            raise _Reply(_error_response(404, f"Registration token with ID {token_id} not found"))
        return stored

    async def _create_token(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await self._json_body(
            request,
            TOKENS_PATH,
            {"token": "a string", "usage_limit": "u32", "expires_at": "a RFC 3339 timestamp"},
        )
        expires_at = _timestamp_field(body, "expires_at")
        with self._lock:
            token = body.get("token")
            if token is not None and any(t.token == token for t in self._tokens.values()):
                return _error_response(
                    409, "A registration token with the same token already exists"
                )
            stored = self._create(token, body.get("usage_limit"), expires_at)
            return self._single(stored, status=201)

    async def _get_token(self, request: web.Request) -> web.Response:
        self._authorize(request)
        token_id = self._path_id(request)
        with self._lock:
            return self._single(self._lookup(token_id))

    async def _update_token(self, request: web.Request) -> web.Response:
        self._authorize(request)
        token_id = self._path_id(request)
        body = await self._json_body(
            request,
            TOKEN_PATH,
            {"usage_limit": "u32", "expires_at": "a RFC 3339 timestamp"},
        )
        expires_at = _timestamp_field(body, "expires_at")
        with self._lock:
            stored = self._lookup(token_id)
            # Merge patch: an absent key leaves the field, null clears it.
            if "usage_limit" in body:
                stored.usage_limit = body["usage_limit"]
            if "expires_at" in body:
                stored.expires_at = expires_at
            return self._single(stored)

    async def _revoke_token(self, request: web.Request) -> web.Response:
        self._authorize(request)
        token_id = self._path_id(request)
        with self._lock:
            stored = self._lookup(token_id)
            if stored.revoked_at is not None:
                return _error_response(
                    400, f"Registration token with ID {token_id} is already revoked"
                )
            stored.revoked_at = self.now()
            return self._single(stored, f"{TOKENS_PATH}/{token_id}/revoke")

    async def _unrevoke_token(self, request: web.Request) -> web.Response:
        self._authorize(request)
        token_id = self._path_id(request)
        with self._lock:
            stored = self._lookup(token_id)
            if stored.revoked_at is None:
                return _error_response(400, f"Registration token with ID {token_id} is not revoked")
            stored.revoked_at = None
            return self._single(stored, f"{TOKENS_PATH}/{token_id}/unrevoke")

    async def _list_tokens(self, request: web.Request) -> web.Response:
        self._authorize(request)
        query = request.query
        filters: dict[str, bool] = {}
        for name in ("used", "revoked", "expired", "valid"):
            raw = query.get(f"filter[{name}]")
            if raw is None:
                continue
            if raw not in ("true", "false"):
                return _error_response(400, "Invalid filter parameters")
            filters[name] = raw == "true"
        try:
            page = _Pagination.from_query(query)
        except ValueError as exc:
            return _error_response(400, *exc.args)

        base = TOKENS_PATH
        separator = "?"
        for name, value in filters.items():
            base += f"{separator}filter[{name}]={str(value).lower()}"
            separator = "&"
        if page.include_count != "true":
            base += f"{separator}count={page.include_count}"

        with self._lock:
            now = self.now()
            matching = [
                t
                for t in sorted(self._tokens.values(), key=lambda t: t.id)
                if _matches(t, filters, now)
            ]
            if page.include_count == "only":
                return web.json_response(
                    {"meta": {"count": len(matching)}, "links": {"self": base}}
                )
            window = [
                t
                for t in matching
                if (page.after is None or t.id > page.after)
                and (page.before is None or t.id < page.before)
            ]
            if page.forward:
                edges = window[: page.count]
                has_next, has_previous = len(window) > page.count, False
            else:
                edges = window[-page.count :] if window else []
                has_next, has_previous = False, len(window) > page.count
            links: JsonObject = {
                "self": page.url(base),
                "first": _Pagination(count=page.count).url(base),
                "last": _Pagination(count=page.count, forward=False).url(base),
            }
            if has_next:
                links["next"] = dataclasses.replace(page, before=None, after=edges[-1].id).url(base)
            if has_previous:
                links["prev"] = dataclasses.replace(page, after=None, before=edges[0].id).url(base)
            data = []
            for stored in edges:
                resource = self._resource(stored, now)
                resource["meta"] = {"page": {"cursor": stored.id}}
                data.append(resource)
            answer: JsonObject = {}
            if page.include_count == "true":
                answer["meta"] = {"count": len(matching)}
            answer["data"] = data
            answer["links"] = links
            return web.json_response(answer)

    # --- control API (tests, demos, other processes) ------------------------------------------

    async def _control_tokens(self, request: web.Request) -> web.Response:
        return web.json_response([_jsonable(t) for t in self.tokens()])

    async def _control_token(self, request: web.Request) -> web.Response:
        found = self.token(request.match_info["id"])
        if found is None:
            return web.json_response({"error": "unknown token"}, status=404)
        return web.json_response(_jsonable(found))

    async def _control_add_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        expires = body.get("expires_at")
        try:
            added = self.add_token(
                body.get("token"),
                usage_limit=body.get("usage_limit"),
                expires_at=parse_rfc3339(expires) if isinstance(expires, str) else None,
                revoked=bool(body.get("revoked", False)),
                times_used=int(body.get("times_used", 0)),
            )
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(_jsonable(added), status=201)

    async def _control_delete_all(self, request: web.Request) -> web.Response:
        self.delete_all()
        return web.json_response({"deleted": True})

    async def _control_use_token(self, request: web.Request) -> web.Response:
        require_valid = request.query.get("force") != "true"
        try:
            used = self.simulate_registration(request.match_info["id"], require_valid=require_valid)
        except KeyError:
            return web.json_response({"error": "unknown token"}, status=404)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(_jsonable(used))

    async def _control_sign_up(self, request: web.Request) -> web.Response:
        """`MasAccounts.sign_up` from another process: body {"username", "email"}."""
        body = await request.json()
        try:
            user = self.accounts.sign_up(request.match_info["id"], body["username"], body["email"])
        except KeyError:
            return web.json_response({"error": "unknown token"}, status=404)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(_jsonable(user))

    async def _control_clock(self, request: web.Request) -> web.Response:
        return web.json_response({"now": format_rfc3339(self.now())})

    async def _control_set_clock(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "set" in body:
            when = body["set"]
            self.set_clock(parse_rfc3339(when) if isinstance(when, str) else None)
        if "advance" in body:
            self.advance(float(body["advance"]))
        return web.json_response({"now": format_rfc3339(self.now())})

    async def _control_expire_access_tokens(self, request: web.Request) -> web.Response:
        self.expire_access_tokens()
        return web.json_response({"expired": True})

    async def _control_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "fail_next" in body:
            spec = body["fail_next"]
            self.fail_next(
                int(spec.get("n", 1)),
                int(spec.get("status", 500)),
                target=spec.get("target", "admin"),
                commit=bool(spec.get("commit", False)),
                retry_after=spec.get("retry_after"),
                text=spec.get("text"),
                method=spec.get("method"),
            )
        if "delay" in body:
            spec = body["delay"]
            self.delay(float(spec.get("seconds", 0)), target=spec.get("target", "admin"))
        if "drop_next" in body:
            self.drop_response_after_commit_next(int(body["drop_next"]))
        return web.json_response({"ok": True})

    async def _control_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _control_requests(self, request: web.Request) -> web.Response:
        counts = [
            {"method": m, "path": p, "status": s, "count": n}
            for (m, p, s), n in sorted(self.request_counts().items())
        ]
        return web.json_response({"counts": counts})

    async def _control_spec_violations(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(
                {"response": list(self.spec_violations), "request": list(self.request_violations)}
            )


GUIDE_SITE_CONFIG: JsonObject = {
    "server_name": "example.org",
    "password_login_enabled": True,
    "password_registration_enabled": True,
    "password_registration_email_required": True,
    "password_registration_token_required": True,
    "registration_token_required": False,
    "email_change_allowed": True,
    "displayname_change_allowed": True,
    "password_change_allowed": True,
    "account_recovery_allowed": False,
    "account_deactivation_allowed": True,
    "captcha_enabled": False,
    "minimum_password_complexity": 3,
}


@dataclasses.dataclass
class UpstreamProvider:
    id: str
    human_name: str | None
    issuer: str | None
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    registration_token_required: bool

    def attributes(self) -> JsonObject:
        return {
            "issuer": self.issuer,
            "human_name": self.human_name,
            "brand_name": None,
            "created_at": format_rfc3339(self.created_at),
            "disabled_at": _optional_time(self.disabled_at),
            "registration_token_required": self.registration_token_required,
        }


@dataclasses.dataclass(frozen=True)
class _Pagination:
    count: int = DEFAULT_PAGE_SIZE
    forward: bool = True
    after: str | None = None
    before: str | None = None
    include_count: str = "true"

    @classmethod
    def from_query(cls, query: Any) -> _Pagination:
        def positive(name: str) -> int | None:
            raw = query.get(name)
            if raw is None:
                return None
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError("Invalid pagination parameters")
            return int(raw)

        def ulid(name: str) -> str | None:
            raw = query.get(name)
            if raw is None:
                return None
            value = normalize_ulid(raw)
            if value is None:
                raise ValueError("Invalid pagination parameters")
            return value

        first, last = positive("page[first]"), positive("page[last]")
        if first is not None and last is not None:
            raise ValueError("Cannot specify both `page[first]` and `page[last]` parameters")
        include_count = query.get("count", "true")
        if include_count not in ("true", "false", "only"):
            raise ValueError("Invalid pagination parameters")
        return cls(
            count=last if last is not None else first or DEFAULT_PAGE_SIZE,
            forward=last is None,
            after=ulid("page[after]"),
            before=ulid("page[before]"),
            include_count=include_count,
        )

    def url(self, base: str) -> str:
        """MAS's url_with_pagination: cursors, then the page size, after the base query."""
        path, _, query = base.partition("?")
        if self.before is not None:
            query += f"&page[before]={self.before}"
        if self.after is not None:
            query += f"&page[after]={self.after}"
        query += f"&page[{'first' if self.forward else 'last'}]={self.count}"
        return f"{path}?{query.lstrip('&')}"


def _matches(token: StoredToken, filters: dict[str, bool], now: dt.datetime) -> bool:
    facts = {
        "used": token.times_used > 0,
        "revoked": token.revoked_at is not None,
        "expired": token.expired(now),
        "valid": token.valid(now),
    }
    return all(facts[name] == wanted for name, wanted in filters.items())


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    # As MAS 1.22 does: the pair as it is, never form-decoded (mas/FACTS.md).
    return client_id, secret


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"number `{value}`"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return "null"


def _is_kind(value: object, kind: str) -> bool:
    if kind == "u32":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
    if kind == "a string":
        return isinstance(value, str)
    return isinstance(value, str) and parse_rfc3339(value) is not None


def _timestamp_field(body: JsonObject, name: str) -> dt.datetime | None:
    value = body.get(name)
    return parse_rfc3339(value) if isinstance(value, str) else None


def _jsonable(snapshot: JsonObject) -> JsonObject:
    return {
        key: format_rfc3339(value) if isinstance(value, dt.datetime) else value
        for key, value in snapshot.items()
    }


# --- standalone ----------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.doubles.mas", description="Run the MAS test double in the foreground."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument(
        "--client-secret-file", type=Path, help="file holding the client secret (default: built-in)"
    )
    parser.add_argument(
        "--client-auth-method", choices=["client_secret_basic", "client_secret_post"]
    )
    parser.add_argument("--access-token-lifetime", type=int, default=DEFAULT_ACCESS_TOKEN_LIFETIME)
    parser.add_argument("--public-base", help="base URL that discovery advertises")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    secret = DEFAULT_CLIENT_SECRET
    if args.client_secret_file is not None:
        secret = args.client_secret_file.read_text(encoding="utf-8").strip()
    double = MasDouble(
        args.host,
        args.port,
        client_id=args.client_id,
        client_secret=secret,
        client_auth_method=args.client_auth_method,
        access_token_lifetime=args.access_token_lifetime,
        public_base=args.public_base,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with double:
        print(f"MAS double listening on {double.url}", flush=True)
        while not stop.wait(timeout=1.0):
            pass
        print("MAS double stopping", flush=True)
    return 1 if double.spec_violations else 0


if __name__ == "__main__":
    sys.exit(main())
