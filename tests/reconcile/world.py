"""In-memory fakes of everything reconcile talks to, and the crash that can strike at each await.

One `World` holds the state that survives an operator crash: MAS's tokens (`MasStore`, with the
MAS double's token semantics), the API server's Invitations and Secrets (`ApiServer`), the mail
relay's outbox, the Events and the clock. What a process holds (locks, the semaphore, the
clients) is built afresh by `World.restart`, as a new operator process would.

Every call a fake answers is one request on the wire and passes through `Wire.call`: it is
counted (a crash point), attributed to the reconcile function that awaited it, and, when the
plan says so, the process "dies" there: before the request reached the server, or after the
server acted on it and before its answer arrived.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import json
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import SecretStr

from tests.doubles.mas import TOKENS_PATH, StoredToken, UlidGenerator

from .subject import (
    GROUP,
    RESEND_ANNOTATION,
    VERSION,
    AccountLookup,
    BackendMisdirected,
    BackendRejected,
    BackendUnavailable,
    Dependencies,
    Invitation,
    KubeConflict,
    KubeNotFound,
    KubeStore,
    KubeUnavailable,
    MailTemporaryError,
    MatrixError,
    Onboarding,
    RegistrationToken,
    SecretConflict,
    Settings,
    TokenBackend,
    TokenNotFound,
    TokenState,
    reconcile_module,
    sync_module,
)

Body = dict[str, Any]
T = TypeVar("T")

NAMESPACE = "invites"
START = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
FINALIZER = f"{GROUP}/revoke-token"
PROGRESS = f"{GROUP}/reconcile"  # Kopf's record of a handler's retries
SECRET_KEY = "token"


class Crash(BaseException):
    """The operator process died at this await.

    A BaseException, so that no `except OperatorError` or `contextlib.suppress` in the code
    under test can swallow it, as none can swallow a SIGKILL.
    """


@dataclasses.dataclass(frozen=True)
class CrashPoint:
    index: int
    call: str  # the request, e.g. "MAS POST /user-registration-tokens"
    step: str  # the reconcile function ("sync.<name>": sync pass function) that awaited it
    changed: bool  # the server's state changed: crashing after it differs from before it
    epoch: int = 0  # bumped each time the operator reads Invitations outside the wire (Kopf)


@dataclasses.dataclass(frozen=True)
class CrashPlan:
    """Where the fault strikes: a crash before or after the effect of request `at`, or (with
    `lost_answer`) no crash: the server acts and the client sees a transport error."""

    at: int
    after_effect: bool
    lost_answer: bool = False

    def __str__(self) -> str:
        if self.lost_answer:
            return f"{self.at}-answer-lost"
        return f"{self.at}-{'after' if self.after_effect else 'before'}"


class LostAnswer(Exception):
    """The server acted on the request, the answer never arrived (a timeout, a reset): each
    fake's client turns it into its transport error."""


class _Answer(Exception):
    """A server's non-2xx answer, as the fakes' clients see it."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Ledger:
    """A version that every change of server-side state bumps (for `CrashPoint.changed`)."""

    def __init__(self) -> None:
        self.version = 0

    def bump(self) -> None:
        self.version += 1


class Wire:
    """Counts the requests, attributes each to the step that awaited it, crashes where planned,
    and lets someone else write between two requests (`meddle`)."""

    def __init__(
        self, ledger: Ledger, on_crash: Callable[[], None], on_lost: Callable[[], None]
    ) -> None:
        self._ledger = ledger
        self._on_crash = on_crash
        self._on_lost = on_lost
        self.points: list[CrashPoint] = []
        self.plan: CrashPlan | None = None
        # Crash at the first request of this name (before or after its effect), wherever.
        self.crash_on: tuple[str, bool] | None = None
        # Someone else writes just before this request: (index, what they do).
        self.meddle: tuple[int, Callable[[], object]] | None = None
        self.crashed_at: CrashPoint | None = None
        self.crashes = 0
        self.epoch = 0
        self.lost_at: CrashPoint | None = None  # where an answer was lost (no crash)
        # The process died: what its unwinding would still send (a `finally` that revokes a
        # session, say) never leaves it, as after a SIGKILL. `World.restart` revives it.
        self.dead = False

    async def call(self, name: str, effect: Callable[[], T]) -> T:
        if self.dead:
            raise Crash("the process is dead")
        before = self._ledger.version
        step = _awaiting_step()
        index = len(self.points)
        if self.meddle is not None and self.meddle[0] == index:
            meddle, self.meddle = self.meddle[1], None
            meddle()
            before = self._ledger.version
        plan = self.plan if self.plan is not None and self.plan.at == index else None
        if plan is None and self.crash_on is not None and self.crash_on[0] == name:
            plan = CrashPlan(index, self.crash_on[1])
            self.crash_on = None
        if plan is not None and plan.lost_answer:
            self.plan = None
            with contextlib.suppress(_Answer):
                effect()
            self._record(index, name, step, before, crash_now=False)
            self.lost_at = self.points[-1]
            self._on_lost()
            raise LostAnswer(f"the answer to {name} was lost")
        crash_now = plan is not None
        if plan is not None and not plan.after_effect:
            self._crash(CrashPoint(index, name, step, changed=False, epoch=self.epoch))
        try:
            result = effect()
        except _Answer:
            self._record(index, name, step, before, crash_now)
            raise
        self._record(index, name, step, before, crash_now)
        return result

    def _record(self, index: int, name: str, step: str, before: int, crash_now: bool) -> None:
        changed = self._ledger.version != before
        point = CrashPoint(index, name, step, changed=changed, epoch=self.epoch)
        self.points.append(point)
        if crash_now:
            self._crash(point)

    def _crash(self, point: CrashPoint) -> None:
        self.plan = None  # one crash per plan; the restarted operator runs undisturbed
        self.crashed_at = point
        self.crashes += 1
        self.dead = True
        self._on_crash()
        raise Crash(f"crash at {point}")


def _awaiting_step() -> str:
    """The innermost function of the reconcile module (its name) or of the sync pass
    ("sync.<name>") on the stack; the status writer's frames count as the step that wrote."""
    frame = sys._getframe(2)
    while frame is not None:
        code, module = frame.f_code, frame.f_globals.get("__name__")
        if module == reconcile_module.__name__:
            return code.co_name
        if module == sync_module.__name__:
            return f"sync.{code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "(outside reconcile and sync)"


class FakeClock:
    """The one clock of the world: the operator's, MAS's and the API server's."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


# --- MAS ----------------------------------------------------------------------------------


class MasStore:
    """MAS's registration tokens, with the semantics of tests/doubles/mas.py (and MAS's FACTS):
    ULID ids in creation order, a value stored as given and unique (409 on a duplicate), `valid`
    computed per request, PUT as a merge patch, revoke/unrevoke answering 400 when repeated, no
    delete through the API."""

    def __init__(self, clock: FakeClock, ledger: Ledger) -> None:
        self._clock = clock
        self._ledger = ledger
        self.ulids = UlidGenerator()  # shared by forks: its lock cannot be copied
        self.tokens: dict[str, StoredToken] = {}
        self.down = False  # an outage: every request fails before it reaches the store
        self.down_until: dt.datetime | None = None  # an outage that ends on the world's clock
        self.accounts: dict[str, str] = {}  # address → Matrix ID of the account that has it
        self.lookups_refused = False  # /user-emails answers a bare 404 (no such route here)

    def create(
        self, value: str, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> StoredToken:
        if any(t.token == value for t in self.tokens.values()):
            raise _Answer(409)
        now = self._clock()
        stored = StoredToken(
            id=self.ulids.new(now),
            token=value,
            usage_limit=usage_limit,
            times_used=0,
            created_at=now,
            expires_at=expires_at,
        )
        self.tokens[stored.id] = stored
        self._ledger.bump()
        return dataclasses.replace(stored)

    def get(self, token_id: str) -> StoredToken:
        stored = self.tokens.get(token_id)
        if stored is None:
            raise _Answer(404)
        return dataclasses.replace(stored)

    def page(self, after: str | None, size: int) -> list[StoredToken]:
        ordered = sorted(self.tokens.values(), key=lambda t: t.id)
        return [dataclasses.replace(t) for t in ordered if after is None or t.id > after][:size]

    def newest(self, size: int) -> list[StoredToken]:
        ordered = sorted(self.tokens.values(), key=lambda t: t.id)
        return [dataclasses.replace(t) for t in ordered[-size:]]

    def update(
        self, token_id: str, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> StoredToken:
        stored = self._lookup(token_id)
        stored.usage_limit, stored.expires_at = usage_limit, expires_at
        self._ledger.bump()
        return dataclasses.replace(stored)

    def revoke(self, token_id: str) -> StoredToken:
        stored = self._lookup(token_id)
        if stored.revoked_at is not None:
            raise _Answer(400)
        stored.revoked_at = self._clock()
        self._ledger.bump()
        return dataclasses.replace(stored)

    def unrevoke(self, token_id: str) -> StoredToken:
        stored = self._lookup(token_id)
        if stored.revoked_at is None:
            raise _Answer(400)
        stored.revoked_at = None
        self._ledger.bump()
        return dataclasses.replace(stored)

    def _lookup(self, token_id: str) -> StoredToken:
        stored = self.tokens.get(token_id)
        if stored is None:
            raise _Answer(404)
        return stored

    # What MAS's admin does by hand (not through the operator's wire).

    def delete(self, token_id: str) -> None:
        """Lost, as in a database restored from before the token existed."""
        del self.tokens[token_id]
        self._ledger.bump()

    def unavailable(self) -> bool:
        return self.down or (self.down_until is not None and self._clock() < self.down_until)

    def use(self, token_id: str, *, email: str | None = None, account: str | None = None) -> None:
        """Someone completed a registration with it (MAS counts at completion, unchecked);
        `account` signed up with `email`."""
        if email is not None and account is not None:
            self.accounts[email] = account
        stored = self.tokens[token_id]
        stored.times_used += 1
        stored.last_used_at = self._clock()
        self._ledger.bump()

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [t.snapshot(now) for t in sorted(self.tokens.values(), key=lambda t: t.id)]


class FakeTokenBackend:
    """`TokenBackend` over `MasStore`, one wire request per MAS request, answering as
    `backends.mas.MasTokenBackend` does: a 409 on create means "find it by listing", never a
    second token; 400 on a repeated revoke or unrevoke is read back; 404 is None or
    TokenNotFound as the protocol says."""

    name = "MAS"
    PAGE = 2  # small pages: listing takes several requests, so several crash points

    def __init__(self, store: MasStore, wire: Wire, clock: FakeClock) -> None:
        self._store = store
        self._wire = wire
        self._clock = clock

    async def _request(self, name: str, effect: Callable[[], T]) -> T:
        def unless_down() -> T:
            if self._store.unavailable():
                raise _Answer(503)
            return effect()

        try:
            return await self._wire.call(name, unless_down)
        except LostAnswer as lost:
            raise BackendUnavailable(f"MAS: {lost}", retry_after=5.0) from None
        except _Answer as answer:
            if answer.status == 503:
                raise BackendUnavailable("MAS answered 503", retry_after=10.0) from None
            raise

    def _state(self, stored: StoredToken) -> TokenState:
        """The token as MAS answers it (the double's JSON), read by the real client's model."""
        resource = {
            "type": "user-registration_token",
            "id": stored.id,
            "attributes": stored.attributes(self._clock()),
            "links": {"self": f"{TOKENS_PATH}/{stored.id}"},
        }
        return RegistrationToken.model_validate(resource).to_state()

    async def issue(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        value = token.get_secret_value()
        try:
            created = await self._request(
                "MAS POST /user-registration-tokens",
                lambda: self._store.create(value, usage_limit, expires_at),
            )
        except _Answer as answer:
            if answer.status != 409:
                raise
            return await self.on_conflict(token, usage_limit=usage_limit, expires_at=expires_at)
        return self._state(created)

    async def on_conflict(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        """The value exists already (our create went through, its answer was lost): find it."""
        existing = await self._find_by_value(token)
        if existing is None:
            raise BackendUnavailable(
                "MAS reported the token as existing but it is not in the token list yet",
                retry_after=5.0,
            )
        return existing

    async def read(self, token_id: str) -> TokenState | None:
        try:
            return self._state(await self._get(token_id))
        except _Answer:
            return None

    async def _get(self, token_id: str) -> StoredToken:
        return await self._request(
            "MAS GET /user-registration-tokens/{id}", lambda: self._store.get(token_id)
        )

    async def list_all(self) -> AsyncIterator[TokenState]:
        after: str | None = None
        while True:
            page = await self._request(
                "MAS GET /user-registration-tokens?page[after]",
                functools.partial(self._store.page, after, self.PAGE),
            )
            for stored in page:
                yield self._state(stored)
            if len(page) < self.PAGE:
                return
            after = page[-1].id

    async def list_newest(self, count: int) -> list[TokenState]:
        page = await self._request(
            "MAS GET /user-registration-tokens?page[last]",
            functools.partial(self._store.newest, count),
        )
        return [self._state(stored) for stored in page]

    async def update(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        try:
            updated = await self._request(
                "MAS PUT /user-registration-tokens/{id}",
                lambda: self._store.update(token_id, usage_limit, expires_at),
            )
        except _Answer:
            raise TokenNotFound(f"MAS has no registration token with id {token_id}") from None
        return self._state(updated)

    async def revoke(self, token_id: str) -> TokenState | None:
        try:
            return self._state(
                await self._request(
                    "MAS POST /user-registration-tokens/{id}/revoke",
                    lambda: self._store.revoke(token_id),
                )
            )
        except _Answer as answer:
            if answer.status == 404:
                return None
        current = await self.read(token_id)  # 400: revoked already, the state we wanted
        if current is None:
            return None
        if current.revoked:
            return current
        raise BackendRejected(f"MAS refused to revoke token {token_id}")

    async def unrevoke(self, token_id: str) -> TokenState:
        try:
            return self._state(
                await self._request(
                    "MAS POST /user-registration-tokens/{id}/unrevoke",
                    lambda: self._store.unrevoke(token_id),
                )
            )
        except _Answer as answer:
            if answer.status == 404:
                raise TokenNotFound(f"MAS has no registration token with id {token_id}") from None
        current = await self.read(token_id)  # 400: not revoked, the state we wanted
        if current is None:
            raise TokenNotFound(f"MAS has no registration token with id {token_id}")
        if not current.revoked:
            return current
        raise BackendRejected(f"MAS refused to un-revoke token {token_id}")

    async def find_account(
        self, email: str, *, used_at: dt.datetime | None, not_before: dt.datetime
    ) -> AccountLookup:
        def lookup() -> str | None:
            if self._store.lookups_refused:
                raise _Answer(404)
            return self._store.accounts.get(email)

        try:
            account = await self._request("MAS GET /user-emails", lookup)
        except _Answer:
            raise BackendMisdirected("MAS answered /user-emails with 404") from None
        return AccountLookup(account, "found" if account else f"no account has {email}")

    async def aclose(self) -> None:
        """Nothing to release."""

    async def _find_by_value(self, token: SecretStr) -> TokenState | None:
        wanted = token.get_secret_value()
        async for candidate in self.list_all():
            if secrets.compare_digest(candidate.token.get_secret_value(), wanted):
                return candidate
        return None


# --- Kubernetes ---------------------------------------------------------------------------


def json_copy(value: T) -> T:
    """A deep copy of JSON data, as a client gets it off the wire (and faster than deepcopy)."""
    copied: T = json.loads(json.dumps(value))
    return copied


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return json_copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class ApiServer:
    """Invitations and Secrets as the API server keeps them: resourceVersions that move on each
    write, a generation that moves on spec changes only, 409 on a create of an existing name and
    on a write conditioned on a stale resourceVersion, deletion held by our finalizer, and
    Secrets garbage-collected with the Invitation that owns them."""

    def __init__(self, clock: FakeClock, ledger: Ledger) -> None:
        self._clock = clock
        self._ledger = ledger
        self._rv = 0
        self._uids = 0
        self.invitations: dict[str, Body] = {}
        self.secrets: dict[str, Body] = {}
        self.conflicts = 0  # writes refused for a stale resourceVersion
        self.gc_delay = dt.timedelta()  # how long the garbage collector lags behind a deletion
        self._orphaned: list[tuple[str, dt.datetime]] = []  # (owner uid, collect after)

    def _next_version(self) -> str:
        self._rv += 1
        self._ledger.bump()
        return str(self._rv)

    # The admin's side (kubectl, Flux): not on the operator's wire.

    def create_invitation(
        self, name: str, spec: Body, *, annotations: dict[str, str] | None = None
    ) -> Body:
        self._uids += 1
        body: Body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Invitation",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": f"uid-{self._uids}",
                "generation": 1,
                "creationTimestamp": _timestamp(self._clock()),
                "finalizers": [FINALIZER],
                "annotations": dict(annotations or {}),
            },
            "spec": json_copy(spec),
        }
        body["metadata"]["resourceVersion"] = self._next_version()
        self.invitations[name] = body
        return json_copy(body)

    def edit_spec(self, name: str, **changes: Any) -> None:
        body = self.invitations[name]
        body["spec"] = merge_patch(body["spec"], changes)
        body["metadata"]["generation"] += 1
        body["metadata"]["resourceVersion"] = self._next_version()

    def annotate(self, name: str, key: str, value: str | None) -> None:
        """Set an annotation (None: remove it, as `kubectl annotate ... key-`)."""
        body = self.invitations[name]
        annotations = body["metadata"].setdefault("annotations", {})
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
        body["metadata"]["resourceVersion"] = self._next_version()

    def delete_invitation(self, name: str) -> None:
        body = self.invitations[name]
        body["metadata"]["deletionTimestamp"] = _timestamp(self._clock())
        body["metadata"]["resourceVersion"] = self._next_version()

    def progress(self, name: str) -> dict[str, Any]:
        """Kopf's progress record of the reconcile handler ({}: none, no retry under way)."""
        annotations = self.invitations[name]["metadata"].get("annotations") or {}
        record: dict[str, Any] = json.loads(annotations.get(PROGRESS, "{}"))
        return record

    def set_progress(self, name: str, record: dict[str, Any] | None) -> None:
        """What Kopf writes after the handler failed temporarily (its record, under our
        prefix) and once it is done (the record removed): a write only if that changes it."""
        if name not in self.invitations:
            return
        annotations = self.invitations[name]["metadata"].setdefault("annotations", {})
        if record is None and PROGRESS not in annotations:
            return
        if record is None:
            del annotations[PROGRESS]
        else:
            annotations[PROGRESS] = json.dumps({"purpose": "create", **record})
        self.invitations[name]["metadata"]["resourceVersion"] = self._next_version()

    def remove_finalizer(self, name: str) -> None:
        """What Kopf does once the delete handler succeeded; the garbage collector follows,
        `gc_delay` later on the world's clock (at once by default)."""
        body = self.invitations.pop(name)
        self._orphaned.append((body["metadata"]["uid"], self._clock() + self.gc_delay))
        self._ledger.bump()
        self.collect_garbage()

    def collect_garbage(self) -> None:
        """kube-controller-manager's garbage collector: delete the Secrets whose owner is gone,
        once their time has come (`operate` lets it run between rounds)."""
        now, waiting = self._clock(), []
        for uid, due in self._orphaned:
            if due > now:
                waiting.append((uid, due))
                continue
            for secret_name, secret in list(self.secrets.items()):
                owners = secret["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in owners):
                    del self.secrets[secret_name]
                    self._ledger.bump()
        self._orphaned = waiting

    def secret_value(self, name: str) -> str | None:
        secret = self.secrets.get(name)
        if secret is None:
            return None
        return base64.b64decode(secret["data"][SECRET_KEY]).decode()

    # The operator's side: what the wire carries.

    def get_invitation(self, name: str) -> Body:
        body = self.invitations.get(name)
        if body is None:
            raise _Answer(404)
        return json_copy(body)

    def patch_invitation_status(self, name: str, patch: Body, resource_version: str | None) -> Body:
        body = self.invitations.get(name)
        if body is None:
            raise _Answer(404)
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise _Answer(409)
        body["status"] = merge_patch(body.get("status") or {}, patch)
        body["metadata"]["resourceVersion"] = self._next_version()
        return json_copy(body)

    def get_secret(self, name: str) -> Body:
        secret = self.secrets.get(name)
        if secret is None:
            raise _Answer(404)
        return json_copy(secret)

    def create_secret(self, body: Body) -> Body:
        name = body["metadata"]["name"]
        if name in self.secrets:
            raise _Answer(409)
        stored = json_copy(body)
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.secrets[name] = stored
        return json_copy(stored)

    def patch_secret(self, name: str, patch: Body) -> Body:
        secret = self.secrets.get(name)
        if secret is None:
            raise _Answer(404)
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != secret["metadata"]["resourceVersion"]:
            raise _Answer(409)
        merged = merge_patch(secret, {k: v for k, v in patch.items() if k != "metadata"})
        merged["metadata"]["resourceVersion"] = self._next_version()
        self.secrets[name] = merged
        return json_copy(merged)


def _timestamp(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FakeKubeStore:
    """`KubeStore` as `kube.KubeApi` implements it, one wire request per HTTP request, with its
    error mapping: 404 → None or KubeNotFound, 409 → "return what exists" on a create and
    KubeConflict on a conditioned status write; a Secret we do not own is a SecretConflict."""

    def __init__(self, server: ApiServer, wire: Wire) -> None:
        self._server = server
        self._wire = wire

    async def _call(self, name: str, effect: Callable[[], T]) -> T:
        try:
            return await self._wire.call(name, effect)
        except LostAnswer as lost:
            raise KubeUnavailable(f"Kubernetes API: {lost}", retry_after=5) from None

    async def read_token_secret(
        self, namespace: str, name: str, owner_uid: str
    ) -> SecretStr | None:
        try:
            secret = await self._call("Kube GET secret", lambda: self._server.get_secret(name))
        except _Answer:
            return None
        return _token_from(secret, owner_uid)

    async def create_token_secret(
        self, namespace: str, name: str, token: SecretStr, owner: dict[str, Any]
    ) -> SecretStr:
        body: Body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner]},
            "data": {SECRET_KEY: _b64(token)},
        }
        try:
            await self._call("Kube POST secret", lambda: self._server.create_secret(body))
        except _Answer:
            existing = await self.read_token_secret(namespace, name, owner["uid"])
            if existing is None:
                raise KubeUnavailable(
                    "the token Secret vanished while being created", retry_after=1
                ) from None
            return existing
        return token

    async def replace_token(
        self, namespace: str, name: str, token: SecretStr, owner_uid: str
    ) -> None:
        try:
            secret = await self._call("Kube GET secret", lambda: self._server.get_secret(name))
        except _Answer:
            raise KubeNotFound(f"secret {name}: not found") from None
        _token_from(secret, owner_uid)
        patch = {
            "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
            "data": {SECRET_KEY: _b64(token)},
        }
        try:
            await self._call("Kube PATCH secret", lambda: self._server.patch_secret(name, patch))
        except _Answer as answer:
            if answer.status == 404:
                raise KubeNotFound(f"secret {name}: not found") from None
            raise KubeUnavailable(
                "the token Secret changed while being replaced", retry_after=1
            ) from None

    async def patch_invitation_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None
    ) -> dict[str, Any]:
        try:
            return await self._call(
                "Kube PATCH invitation/status",
                lambda: self._server.patch_invitation_status(name, status, resource_version),
            )
        except _Answer as answer:
            if answer.status == 404:
                raise KubeNotFound(f"{namespace}/{name}: not found") from None
            raise KubeConflict(f"{namespace}/{name} changed since it was read") from None

    async def get_invitation(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(
                "Kube GET invitation", lambda: self._server.get_invitation(name)
            )
        except _Answer:
            return None


def _b64(token: SecretStr) -> str:
    return base64.b64encode(token.get_secret_value().encode()).decode()


def _token_from(secret: Body, owner_uid: str) -> SecretStr:
    name = secret["metadata"]["name"]
    owners = secret["metadata"].get("ownerReferences") or []
    if not any(ref.get("uid") == owner_uid for ref in owners):
        raise SecretConflict(f"Secret {name} exists but is not owned by this Invitation")
    encoded = (secret.get("data") or {}).get(SECRET_KEY)
    if not encoded:
        raise SecretConflict(f"Secret {name} has no '{SECRET_KEY}' key")
    return SecretStr(base64.b64decode(encoded).decode())


# --- mail and Events ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mail:
    recipient: str
    invitation_uid: str
    token_id: str
    token_value: str
    enrollment_url: str | None = None


class Outbox:
    """The mail relay: what it accepted is delivered, whatever happens to the operator after."""

    def __init__(self, wire: Wire, ledger: Ledger) -> None:
        self._wire = wire
        self._ledger = ledger
        self.mails: list[Mail] = []

    async def send_invitation(
        self,
        invitation: Invitation,
        *,
        token: SecretStr,
        token_state: TokenState,
        enrollment_url: SecretStr | None = None,
    ) -> None:
        mail = Mail(
            invitation.spec.email,
            invitation.uid,
            token_state.id,
            token.get_secret_value(),
            enrollment_url.get_secret_value() if enrollment_url is not None else None,
        )
        try:
            await self._wire.call("SMTP DATA", lambda: self._accept(mail))
        except LostAnswer as lost:
            raise MailTemporaryError(f"SMTP: {lost}") from None

    def _accept(self, mail: Mail) -> None:
        self.mails.append(mail)
        self._ledger.bump()


# --- Matrix: where onboarding acts -----------------------------------------------------------

ROOMS = ("#general:example.org", "#ops:example.org")
NOTICE_ROOM = "#welcome:example.org"


class Homeserver:
    """Synapse's rooms as onboarding changes them (`onboarding.Homeserver`): an admin join of
    a member succeeds again and changes nothing, as Synapse's does; a room in `closed` refuses
    (403: the acting user lacks power there)."""

    def __init__(self, wire: Wire, ledger: Ledger) -> None:
        self._wire = wire
        self._ledger = ledger
        self.members: dict[str, set[str]] = {}
        self.invited: dict[str, set[str]] = {}
        self.notices: list[tuple[str, str]] = []
        self.closed: set[str] = set()

    async def admin_join(self, room: str, user_id: str, token: SecretStr) -> str:
        await self._call(
            "Matrix POST admin join", room, lambda: self._add(self.members, room, user_id)
        )
        return room

    async def invite(self, room: str, user_id: str, token: SecretStr) -> str:
        await self._call("Matrix POST invite", room, lambda: self._add(self.invited, room, user_id))
        return room

    async def send_notice(self, room: str, text: str, token: SecretStr) -> None:
        await self._call("Matrix PUT notice", room, lambda: self._post(room, text))

    async def _call(self, name: str, room: str, effect: Callable[[], None]) -> None:
        def unless_closed() -> None:
            if room in self.closed:
                raise _Answer(403)
            effect()

        try:
            await self._wire.call(name, unless_closed)
        except LostAnswer as lost:
            raise BackendUnavailable(f"homeserver: {lost}", retry_after=10.0) from None
        except _Answer as answer:
            raise MatrixError(answer.status, "M_FORBIDDEN", "not allowed") from None

    def _add(self, rooms: dict[str, set[str]], room: str, user_id: str) -> None:
        if user_id not in rooms.setdefault(room, set()):
            rooms[room].add(user_id)
            self._ledger.bump()

    def _post(self, room: str, text: str) -> None:
        self.notices.append((room, text))
        self._ledger.bump()


class Sessions:
    """MAS personal sessions of the onboarding user (`onboarding.ActingSessions`): one minted
    per use and revoked after it; a crash leaves it to expire by itself."""

    actor = "the onboarding user @onboarding:example.org"

    def __init__(self, wire: Wire, ledger: Ledger) -> None:
        self._wire = wire
        self._ledger = ledger
        self.live: set[int] = set()
        self.minted = 0

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[SecretStr]:
        try:
            number = await self._wire.call("MAS POST /personal-sessions", self._mint)
        except LostAnswer as lost:
            raise BackendUnavailable(f"MAS: {lost}", retry_after=5.0) from None
        try:
            yield SecretStr(f"mas_personal_session_{number}")
        finally:
            with contextlib.suppress(LostAnswer):  # it expires by itself, as the real one says
                await self._wire.call(
                    "MAS POST /personal-sessions/{id}/revoke", lambda: self._revoke(number)
                )

    def _mint(self) -> int:
        self.minted += 1
        self.live.add(self.minted)
        self._ledger.bump()
        return self.minted

    def _revoke(self, number: int) -> None:
        self.live.discard(number)
        self._ledger.bump()


async def _no_wait(seconds: float) -> None:
    """Onboarding's short waits for Synapse to learn of an account: nothing to wait for here."""


@dataclasses.dataclass(frozen=True)
class Event:
    invitation: str
    type: str
    reason: str
    message: str


class EventLog:
    """Events as `kubectl describe` would list them."""

    def __init__(self, wire: Wire, ledger: Ledger) -> None:
        self._wire = wire
        self._ledger = ledger
        self.events: list[Event] = []

    async def normal(self, invitation: Invitation, reason: str, message: str) -> None:
        await self._post(Event(invitation.name, "Normal", reason, message))

    async def warning(self, invitation: Invitation, reason: str, message: str) -> None:
        await self._post(Event(invitation.name, "Warning", reason, message))

    async def _post(self, event: Event) -> None:
        # Best effort, as kube.KubeEvents: a lost Event never fails a step.
        with contextlib.suppress(LostAnswer):
            await self._wire.call(f"Kube POST event {event.reason}", lambda: self._append(event))

    def _append(self, event: Event) -> None:
        self.events.append(event)
        self._ledger.bump()


# --- the world ----------------------------------------------------------------------------

BackendFactory = Callable[[MasStore, Wire, FakeClock], FakeTokenBackend]


@functools.cache
def settings() -> Settings:
    """One for all worlds: reading them from the environment costs more than a whole run."""
    return Settings(
        default_validity=dt.timedelta(days=7),
        max_validity=dt.timedelta(days=90),
        notice_room=NOTICE_ROOM,
    )


class World:
    """What outlives an operator process; `restart` builds the process's side afresh."""

    def __init__(
        self, *, backend: BackendFactory = FakeTokenBackend, authentik: bool = False
    ) -> None:
        self.clock = FakeClock()
        self.ledger = Ledger()
        # authentik's invitations (enrollment_fake.py), for the scenarios that configure it.
        self.authentik: AuthentikStore | None = (
            AuthentikStore(self.ledger, self.clock) if authentik else None
        )
        self.mas = MasStore(self.clock, self.ledger)
        self.api = ApiServer(self.clock, self.ledger)
        self.window_mails: set[int] = set()  # outbox indices unrecorded when a crash struck
        self.process_alive = False  # an operator process runs (False: the next one starts)
        self.wire = Wire(self.ledger, self._note_crash, self._note_lost_answer)
        self.outbox = Outbox(self.wire, self.ledger)
        self.events = EventLog(self.wire, self.ledger)
        self.matrix = Homeserver(self.wire, self.ledger)
        self.sessions = Sessions(self.wire, self.ledger)
        self._backend = backend
        self.settings = settings()

    def fork(self) -> World:
        """An independent copy of this world (the settings and the id generator are shared):
        a scenario is prepared once and each of its runs starts from a fork."""
        shared = {id(self.settings): self.settings, id(self.mas.ulids): self.mas.ulids}
        return copy.deepcopy(self, shared)

    def restart(self) -> Dependencies:
        """A new operator process: new clients, locks and semaphore; the same world."""
        self.wire.dead = False
        fake = self._backend(self.mas, self.wire, self.clock)
        backend: TokenBackend = fake
        kube: KubeStore = FakeKubeStore(self.api, self.wire)
        onboarding = Onboarding(
            self.settings, fake, homeserver=self.matrix, sessions=self.sessions, sleep=_no_wait
        )
        return Dependencies(
            settings=self.settings,
            backend=backend,
            kube=kube,
            mailer=self.outbox,
            events=self.events,
            clock=self.clock,
            onboarding=onboarding,
            enrollment=FakeEnrollment(self.authentik, self.wire)
            if self.authentik is not None
            else None,
        )

    def unrecorded_mails(self) -> set[int]:
        """Mails (outbox indices) the relay accepted that no Invitation's status records yet:
        the documented window, in which a crash makes one more mail legitimate."""
        unrecorded: set[int] = set()
        for body in self.api.invitations.values():
            uid = body["metadata"]["uid"]
            mails = [i for i, m in enumerate(self.outbox.mails) if m.invitation_uid == uid]
            recorded = int((body.get("status") or {}).get("mailsSent") or 0)
            unrecorded.update(mails[recorded:])
        return unrecorded

    def duplicates_allowed(self) -> dict[str, int]:
        """By recipient: one more mail for each mail a crash caught in the window."""
        allowed: dict[str, int] = {}
        for index in self.window_mails:
            recipient = self.outbox.mails[index].recipient
            allowed[recipient] = allowed.get(recipient, 0) + 1
        return allowed

    def in_window(self, point: CrashPoint) -> bool:
        """Whether a fault at `point` strikes between the relay's accept and the status write
        that records it (the one documented window): at the accept itself, or at the status
        write (with its conflict retries) that follows it with no other request between."""
        calls = [p.call for p in self.wire.points[: point.index]] + [point.call]
        for call in reversed(calls):
            if call == "SMTP DATA":
                return True
            if call not in ("Kube PATCH invitation/status", "Kube GET invitation"):
                return False
        return False

    def _note_crash(self) -> None:
        self.process_alive = False
        crashed = self.wire.crashed_at
        if crashed is not None and self.in_window(crashed):
            self.window_mails |= self.unrecorded_mails()

    def _note_lost_answer(self) -> None:
        # The relay's accept whose answer was lost is in the window as much as a crash is.
        lost = self.wire.lost_at
        if lost is not None and self.in_window(lost):
            self.window_mails |= self.unrecorded_mails()

    def token_values(self) -> set[str]:
        values = {t.token for t in self.mas.tokens.values()}
        values |= {v for name in self.api.secrets if (v := self.api.secret_value(name))}
        values |= {m.token_value for m in self.outbox.mails}
        if self.authentik is not None:  # an enrollment link's key is as secret as a token
            values |= self.authentik.ever
        return {v for v in values if v}


from .enrollment_fake import AuthentikStore, FakeEnrollment  # noqa: E402 (it imports this module)

__all__ = [
    "NAMESPACE",
    "RESEND_ANNOTATION",
    "ApiServer",
    "Crash",
    "CrashPlan",
    "CrashPoint",
    "FakeTokenBackend",
    "MasStore",
    "World",
]
