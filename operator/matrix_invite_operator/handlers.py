"""Kopf registrations, and nothing else: unpack kwargs, call reconcile, map our errors to Kopf's.

Dependencies are built once in the startup handler and kept in the operator's memo
(`memo.deps`); tests and the demo build the same objects. Kopf logs in through `login`, with
the same `KubeLogin` (`memo.kube_login`) as our own Kubernetes calls. Kopf's own bookkeeping
uses our annotation prefix and a `matrix-invite.dev/...` finalizer, and handlers return
nothing, so nothing lands in a status field the schema would prune.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import ssl
from collections.abc import Iterable
from typing import Any, cast

import kopf

from .errors import MailThrottled, OperatorError, PermanentError, TransientError
from .kube_identity import KubeIdentity, KubeLogin, tls_context
from .mail.throttle import WAITING_FOR_SLOT
from .metrics import OperatorMetrics
from .models import GROUP, PLURAL, RESEND_ANNOTATION, VERSION, Phase
from .ownership import SETTLED_PHASES, resume_needed
from .ports import Invitation
from .reconcile import finalize, reconcile, resend_requested
from .runtime import Dependencies, build_dependencies, close_dependencies
from .settings import Settings
from .sync import StatusSync, WatchedInvitation

FINALIZER = f"{GROUP}/revoke-token"
LIST_CHUNK = 200
WORKER_IDLE_SECONDS = 0.1


class _QuietRegistry(logging.Filter):
    """Drops Kopf's per-event success line for `remember`: one per watch event is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Handler 'remember' succeeded."


class _WaitingIsNoError(logging.Filter):
    """Kopf logs every TemporaryError at ERROR; waiting for a mail slot is the rate limit doing
    its job (a hundred Invitations at once wait in line), so it is logged at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and (
            f"failed temporarily: {WAITING_FOR_SLOT}" in record.getMessage()
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            # Checked at ERROR when logged: with the level above INFO, drop it here.
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class _DeadWatcherAlarm(logging.Handler):
    """Raises the restart flag when Kopf reports that a watcher ended.

    Kopf 1.45 never restarts a watcher that failed: a 410 on a continuation page of its paged
    initial listing (the continue token outlived the API server's compaction window) ends it,
    and the operator would go on answering its probe while blind to every Invitation. Kopf's
    guard logs that end at ERROR ("Watcher for ... has failed") or WARNING ("... has finished
    unexpectedly"); `__main__` then stops Kopf and starts it again, which lists afresh.
    """

    def __init__(self, restart: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self._restart = restart

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Watcher for ") and (
            "has failed" in message or "has finished unexpectedly" in message
        ):
            self._restart.set()


logging.getLogger("kopf.objects").addFilter(_QuietRegistry())
logging.getLogger("kopf.objects").addFilter(_WaitingIsNoError())


# Kopf's bookkeeping on the Invitation. Its progress records (a retry's count and delay) stay in
# annotations under our prefix; its diff base does not. Kopf's own diff base is a copy of the
# handled spec in an annotation (`last-handled-configuration`), written with a second PATCH
# after every handled change, which costs the operator, the API server and every watcher one
# more write and watch event per new Invitation and per edit (issue 24). Our status already
# records what was handled, so the diff base is derived from it (`HandledChanges`).

RECONCILE_HANDLER = "reconcile"
_MARKER = f"{GROUP}/kopf-managed"


class _ProgressStorage(kopf.AnnotationsProgressStorage):
    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        # Kopf drops its prefix's annotations from an essence; the resend annotation is ours.
        resend = essence.get("metadata", {}).get("annotations", {}).get(RESEND_ANNOTATION)
        cleared = super().clear(essence=essence)
        if resend is not None:
            metadata = cleared.setdefault("metadata", {})
            metadata.setdefault("annotations", {})[RESEND_ANNOTATION] = resend
        return cleared

    def store(
        self,
        *,
        key: kopf.HandlerId,
        record: kopf.ProgressRecord,
        body: kopf.Body,
        patch: kopf.Patch,
    ) -> None:
        had_marker = _MARKER in body.metadata.annotations or _MARKER in patch.metadata.annotations
        super().store(key=key, record=record, body=body, patch=patch)
        if (record.get("success") or record.get("failure")) and not had_marker:
            # A final record is purged in the same patch (one handler per cause); the marker
            # Kopf adds with it would be the only write left after a handler that succeeded
            # at once. A record that stays (a retry) keeps its marker.
            del patch.metadata.annotations[_MARKER]


def _change_of(body: kopf.Body) -> tuple[int | None, str | None]:
    """What a handled change is known by: the generation (every spec edit bumps it) and the
    resend annotation (an annotation edit does not). Labels and other annotations are not read
    by reconcile."""
    return body.metadata.get("generation"), body.metadata.annotations.get(RESEND_ANNOTATION)


def handled_per_status(body: kopf.Body) -> bool:
    """Whether status says the Invitation's current change was handled to its end.

    `observedGeneration` is written by every reconcile that got as far as its status, also by
    one that failed, so more must agree (`ownership.resume_needed` asks the same): a settled
    phase (a failure leaves Pending or Failed, Kopf's progress record aside, which
    `HandledChanges` checks first), or a wait for the backend's clock (the sync pass owns it
    then). A resend request a mailed Invitation has not answered is a change not handled yet:
    the annotation bumps no generation.
    """
    status = body.get("status") or {}
    if status.get("observedGeneration") != body.metadata.get("generation"):
        return False
    if status.get("waitingForBackendClock"):
        return True
    phase = status.get("phase")
    if phase not in SETTLED_PHASES:
        return False
    if phase != Phase.SENT:
        return True  # no mail would answer a resend request
    spec_resend = (body.get("spec") or {}).get("resend")
    if not spec_resend and not body.metadata.annotations.get(RESEND_ANNOTATION):
        return True
    try:
        invitation = Invitation.from_body(dict(body))
    except OperatorError:
        return False  # invalid now: reconcile says so, and Kopf then waits for the next edit
    return not resend_requested(invitation, invitation.status.resend_handled)


class HandledChanges(kopf.DiffBaseStorage):
    """Kopf's diff base, derived from status instead of written next to it.

    Kopf compares the stored diff base (`fetch`) with the object's essence (`build`): None
    means "never handled" and calls the create handler, an equal essence means nothing new (or,
    at a process start, resume), and after a handler is done Kopf `store`s the new essence,
    which here writes nothing. `fetch` answers "handled" (the current essence) when

    - this process handled this change (generation and resend annotation) to its end: a
      handler that returned, or failed for good (`handled`). The watch events of the
      handler's own status writes arrive after it returned; the earlier ones show an older
      status, and must not start the handler again;
    - or no progress record of Kopf's says a handling cycle is under way (a retry waiting
      for its delay, also one begun by an earlier process) and status says the change was
      handled (`handled_per_status`): that is how a restarted operator, and one that found
      Invitations an older version handled (with Kopf's annotation, which is no longer read),
      tells an edit or a resend request made while it was down.

    and None (not handled: Kopf calls the handler, `reconcile`) otherwise. Deletion is Kopf's
    own business (the finalizer), whatever this says.

    What this process remembers is dropped as soon as an event's status shows the change
    handled, so it holds only the Invitations a handler has just finished.
    """

    def __init__(self, progress: kopf.ProgressStorage) -> None:
        super().__init__()
        self._progress = progress
        self._handled: dict[str, tuple[int | None, str | None]] = {}

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        # What reconcile reads; no copy of the whole body (status included) per watch event.
        essence: dict[str, Any] = {"spec": copy.deepcopy(dict(body.get("spec") or {}))}
        resend = body.metadata.annotations.get(RESEND_ANNOTATION)
        if resend is not None:
            essence["metadata"] = {"annotations": {RESEND_ANNOTATION: resend}}
        return cast(kopf.BodyEssence, essence)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        uid = body.metadata.uid
        if body.metadata.deletion_timestamp is not None:
            self._handled.pop(uid, None)
            return self.build(body=body)
        in_progress = self._progress.fetch(key=kopf.HandlerId(RECONCILE_HANDLER), body=body)
        if in_progress is None and handled_per_status(body):
            self._handled.pop(uid, None)
            return self.build(body=body)
        if self._handled.get(uid) == _change_of(body):
            return self.build(body=body)
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing to write: status says it (see the class)."""

    def handled(self, body: kopf.Body) -> None:
        """A handler is done with the change `body` shows: Kopf retries it no more."""
        if body.metadata.deletion_timestamp is None:
            self._handled[body.metadata.uid] = _change_of(body)

    def __len__(self) -> int:
        return len(self._handled)


class _InMemoryTls(kopf.ConnectionInfo):
    """Kopf's connection info, whose SSL context loads key material from memory: Kopf's own
    `as_ssl_context` writes certificate and key data to temp files while it loads them."""

    def as_ssl_context(self) -> ssl.SSLContext:
        return tls_context(
            ca_pem=_pem(self.ca_data),
            cert_pem=_pem(self.certificate_data),
            key_pem=_pem(self.private_key_data),
            insecure=bool(self.insecure),
        )


def _pem(data: str | bytes | None) -> bytes | None:
    return data.encode("ascii") if isinstance(data, str) else data


def connection_info(identity: KubeIdentity, *, trust_env: bool = False) -> kopf.ConnectionInfo:
    """Our identity as Kopf's connection info: the same server, CA, token and client certificate,
    and its expiry, so that Kopf logs in again (through `login`) when it passes."""
    return _InMemoryTls(
        server=identity.server,
        ca_data=identity.ca_pem,
        insecure=identity.insecure,
        token=identity.token.get_secret_value() if identity.token else None,
        certificate_data=identity.client_cert_pem,
        private_key_data=(
            identity.client_key_pem.get_secret_value() if identity.client_key_pem else None
        ),
        default_namespace=identity.default_namespace,
        expiration=identity.expires_at,
        trust_env=trust_env,
    )


def _kube_login(memo: kopf.Memo) -> KubeLogin:
    login: KubeLogin | None = memo.get("kube_login")
    if login is None:  # Kopf started without our __main__ (`kopf run`, some tests)
        login = memo.kube_login = KubeLogin()
    return login


@kopf.on.login()
async def login(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Kopf asks at its start, when the identity expired, and after a 401: in the last case the
    identity it had is renewed (a plugin run, a re-read token file), once for all callers."""
    kube_login = _kube_login(memo)
    had: KubeIdentity | None = memo.get("kopf_identity")
    try:
        identity = await (kube_login.renew(had) if had is not None else kube_login.identity())
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.retry_after) from exc
    except OperatorError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    memo.kopf_identity = identity
    return connection_info(identity, trust_env=settings.networking.trust_env)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    progress = _ProgressStorage(prefix=GROUP)
    settings.persistence.progress_storage = progress
    memo.handled_changes = settings.persistence.diffbase_storage = HandledChanges(progress)
    settings.persistence.finalizer = FINALIZER
    # Our own Events tell the story (reconcile.py); Kopf's would add one per retry.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    # Memory at thousands of Invitations (docs/performance.md). Kopf's worker for an object
    # keeps that object's last watch event (about 17 KiB of Python objects) while it idles
    # waiting for more: at its default of 5 s, all workers of a restart were idling at once.
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # And the initial listing comes in pages instead of one response decoded as a whole.
    settings.watching.chunk_size = LIST_CHUNK
    config: Settings = memo.get("config") or Settings()
    memo.config = config
    # A burst of thousands: each Invitation with a worker holds its body, handler frames and
    # Kopf's processing state while it waits for a reconcile slot (about 60 KB); one waiting in
    # Kopf's line for a worker holds only its raw watch event and queue. The limit is on objects
    # in work, so a worker must not idle long: a restart's listing goes through it at up to
    # worker_limit / WORKER_IDLE_SECONDS Invitations a second.
    settings.queueing.worker_limit = config.worker_limit
    # Namespaces are given literally and the CRD ships with the operator: no need to list
    # namespaces or watch CRDs, which would need cluster-wide rights (least privilege, see the
    # chart's RBAC). The CRD must exist when the operator starts.
    settings.scanning.disabled = True
    metrics: OperatorMetrics = memo.get("metrics") or OperatorMetrics()
    memo.metrics = metrics
    memo.deps = await build_dependencies(config, kube=_kube_login(memo), metrics=metrics)
    memo.registry = memo.get("registry") or {}
    memo.sync = StatusSync(memo.deps, memo.registry)
    metrics.observe_state(lambda: memo.registry, lambda: memo.sync.last_success)
    if config.metrics_port:
        try:
            memo.metrics_server = metrics.serve(config.bind_address, config.metrics_port)
        except OSError as exc:
            raise kopf.PermanentError(
                f"cannot serve metrics on {config.bind_address}:{config.metrics_port}: {exc}"
            ) from exc
    memo.sync_task = asyncio.create_task(memo.sync.run_forever(), name="status-sync")
    site = memo.deps.site
    if site is not None:
        # Read before the first Invitation is handled when MAS answers, so its mail fits.
        with contextlib.suppress(OperatorError):
            await site.refresh()
        memo.site_task = asyncio.create_task(
            site.run_forever(config.sync_interval_seconds), name="site-config"
        )
    restart: asyncio.Event | None = memo.get("restart_watching")
    if restart is not None:
        memo.watcher_alarm = _DeadWatcherAlarm(restart)
        logging.getLogger("kopf").addHandler(memo.watcher_alarm)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    alarm: logging.Handler | None = memo.get("watcher_alarm")
    if alarm is not None:
        logging.getLogger("kopf").removeHandler(alarm)
    for name in ("sync_task", "site_task"):
        task: asyncio.Task[None] | None = memo.get(name)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    sync: StatusSync | None = memo.get("sync")
    if sync is not None:
        await sync.aclose()
    if memo.get("deps") is not None:
        await close_dependencies(memo.deps)
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def remember(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the sync pass's view of all Invitations current, without listing them each pass.

    A coroutine, not a function: Kopf runs plain functions in a thread pool, which cost a
    thread hand-off (and a fight for the GIL) on every watch event, and woke the sync loop
    from the wrong thread.
    """
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if type == "DELETED":
        memo.registry.pop(key, None)
        if memo.deps.onboarding is not None:  # also when a finalizer was removed by hand
            memo.deps.onboarding.forget(body["metadata"]["uid"])
        return
    watched = WatchedInvitation.from_body(body)
    memo.registry[key] = watched
    memo.sync.wake(watched)


def _retry_delay(config: Settings, retry: int, error: TransientError) -> float:
    if isinstance(error, MailThrottled):
        # Not an outage: the throttle knows when this Invitation's turn comes, and a growing
        # backoff would leave free slots unused while the queue waits.
        return min(error.retry_after, config.retry_max_seconds)
    backoff: float = config.retry_base_seconds * 2 ** min(retry, 10)
    return min(
        max(backoff, min(error.retry_after, config.retry_max_seconds)), config.retry_max_seconds
    )


def _count_error(memo: kopf.Memo, error: BaseException) -> None:
    metrics: OperatorMetrics | None = memo.get("metrics")
    deps: Dependencies | None = memo.get("deps")
    if metrics is not None and deps is not None and not isinstance(error, MailThrottled):
        metrics.record_reconcile_error(error, deps.backend.name)  # waiting is no error


async def _run(body: kopf.Body, memo: kopf.Memo, retry: int) -> None:
    deps: Dependencies = memo.deps
    config: Settings = memo.config
    changes: HandledChanges | None = memo.get("handled_changes")
    try:
        await reconcile(deps, Invitation.from_body(dict(body)), whole_body=True)
    except PermanentError as exc:
        _count_error(memo, exc)
        if not exc.needs_spec_change:
            # Stalled in status, yet retried slowly: fixing the environment heals it.
            raise kopf.TemporaryError(str(exc), delay=config.retry_max_seconds) from exc
        if changes is not None:
            changes.handled(body)  # Kopf waits for the next change
        raise kopf.PermanentError(str(exc)) from exc
    except TransientError as exc:
        _count_error(memo, exc)
        raise kopf.TemporaryError(str(exc), delay=_retry_delay(config, retry, exc)) from exc
    except OperatorError as exc:
        # Every error of ours has a class (errors.py); should one ever lack it, it is retried
        # slowly, as an environment error, rather than left to Kopf's default handling.
        _count_error(memo, exc)
        raise kopf.TemporaryError(str(exc), delay=config.retry_max_seconds) from exc
    except Exception as exc:
        _count_error(memo, exc)
        raise
    if changes is not None:
        changes.handled(body)


@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def invitation_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    await _run(body, memo, retry)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
async def invitation_resumed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    try:
        invitation = Invitation.from_body(dict(body))
    except OperatorError:
        invitation = None  # an invalid spec: reconcile says so
    if invitation is not None and not resume_needed(invitation):
        return
    await _run(body, memo, retry)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="revoke")
async def invitation_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    deps: Dependencies = memo.deps
    try:
        await finalize(deps, Invitation.from_body(dict(body)))
    except TransientError as exc:
        _count_error(memo, exc)
        raise kopf.TemporaryError(str(exc), delay=_retry_delay(memo.config, retry, exc)) from exc
    except PermanentError as exc:
        _count_error(memo, exc)
        # Letting the object go would leave a working token behind; keep the finalizer, retry
        # slowly, and tell the admin how to get out if they accept that.
        raise kopf.TemporaryError(
            f"cannot revoke the token, so the Invitation is kept: {exc}. Fix the operator's "
            f"MAS access, or remove the finalizer {FINALIZER} by hand to give up on revocation",
            delay=memo.config.retry_max_seconds,
        ) from exc
