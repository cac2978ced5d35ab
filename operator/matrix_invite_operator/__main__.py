"""Command line: `run` starts the operator, `render-mail` previews a mail, `check-config` reads
the settings, `doctor` checks MAS and SMTP as the operator will use them, `serve-invite-page`
serves the static invite page (no credentials; its own Deployment).

`run` reads `Settings` from the environment first and stops with one clear sentence when the
configuration cannot work, instead of entering a crash loop inside Kopf.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr, ValidationError

from . import __version__
from .errors import ConfigurationError, OperatorError
from .locales import LOCALES
from .settings import Settings

if TYPE_CHECKING:
    from .sign_up import SignUpFacts

T = TypeVar("T")

LOST_LEASE_EXIT_CODE = 3
WATCH_RESTART_MAX_DELAY = 60.0


def _load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MATRIX_INVITE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
    return settings


def run(args: argparse.Namespace) -> int:
    import kopf

    from . import handlers  # noqa: F401  (registers the Kopf handlers)
    from .authentik import InvitationPathRedaction
    from .backends.synapse import TokenPathRedaction

    # Settings that cannot even be parsed stop here. Missing credentials or unusable mail
    # settings do not: the operator runs, and every Invitation says what to fix (Stalled),
    # instead of a crash loop that only `kubectl logs` explains.
    settings = _load_settings()
    lease = settings.lease_location()
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
        log_prefix=settings.log_format != "json",
    )
    # One line per HTTP request or probe would bury the lines that matter.
    for chatty in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # Whatever is logged, at any level: Synapse's admin API has the token in the URL path.
    # authentik's invitation API has the invitation's pk (the enrollment link's secret) there.
    for redaction in (TokenPathRedaction(), InvitationPathRedaction()):
        for handler in logging.getLogger().handlers:
            handler.addFilter(redaction)
    return run_in_loop(_lead_then_operate(settings, lease))


def run_in_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` in a new uvloop event loop, as every command that talks to a peer does.

    uvloop's loop, transports and TLS driving are C: every request (ours through
    `coalesced_http`, Kopf's through aiohttp) and every mail costs less of the operator's CPU
    than on asyncio's own loop (docs/performance.md, issue 24). Nothing of ours depends on
    which loop it is: the tests run it on both.
    """
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _lead_then_operate(settings: Settings, lease: tuple[str, str] | None) -> int:
    """Hold the Lease (if election is on), then run Kopf until a signal stops it.

    Kopf starts only once this copy holds the Lease: a standby runs no handler and no sync
    pass. If the Lease cannot be renewed in time, the process ends at once (`os._exit`), as
    client-go's leader election does: an orderly shutdown could still be writing when the
    Lease passes to the next copy.
    """
    from typing import cast

    import kopf

    from .kube import KubeApi, kube_http_client
    from .kube_identity import KubeLogin
    from .leadership import LeaseElector, default_identity, serve_standby_probe

    # One identity for the Lease, for Kopf (handlers.login) and for our own calls: logged in
    # here, so that credentials that cannot work stop the process with one sentence.
    kube_login = KubeLogin()
    identity = await kube_login.identity()
    logging.getLogger(__name__).info("Kubernetes identity from %s", identity.source)
    elector: LeaseElector | None = None
    keeper: asyncio.Task[None] | None = None
    client = None
    if lease is not None:
        # Its own pool (the same client code and identity): renewals must not wait for a
        # connection behind the reconciles' requests.
        client = await kube_http_client(kube_login)
        elector = LeaseElector(KubeApi(client), *lease, default_identity())
        probe = (
            await serve_standby_probe(settings.bind_address, settings.liveness_port)
            if settings.liveness_port
            else None
        )
        try:
            await elector.acquire()
        finally:
            if probe is not None:
                probe.close()
                await probe.wait_closed()
        keeper = asyncio.create_task(elector.keep(), name="lease renewal")
        keeper.add_done_callback(_stop_acting_when_lost)
    liveness = (
        f"http://{settings.bind_address}:{settings.liveness_port}/healthz"
        if settings.liveness_port
        else None
    )
    memo = kopf.Memo(config=settings, kube_login=kube_login)
    restarts = 0
    try:
        while True:
            # handlers.py sets it when a Kopf watcher died (a 410 on a page of the initial
            # listing, see docs/architecture.md); Kopf never restarts one itself.
            restart = asyncio.Event()
            memo.restart_watching = restart
            memo.registry = {}  # filled again by the new listing; deletions may have been missed
            started = time.monotonic()
            await kopf.operator(
                standalone=True,
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                liveness_endpoint=liveness,
                memo=memo,
                stop_flag=restart,
                # Left to itself, Kopf names itself after getpass.getuser(), which raises for a
                # user without an /etc/passwd entry, as the image's 65532 is (seen on a node).
                identity=cast(Any, default_identity()),  # kopf's Identity is not exported
            )
            if not restart.is_set():
                return 0  # stopped by a signal
            # Kopf's signal handlers outlive its run and would swallow a SIGTERM meanwhile.
            for signum in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().remove_signal_handler(signum)
            # Counted from 1 again when Kopf ran a while (10 min) since the last restart.
            restarts = 1 if time.monotonic() - started > 600 else restarts + 1
            # A watcher that dies again at once (say, RBAC refusing the listing) must not
            # turn into a tight loop of listings: 2, 4, 8 ... up to 60 s between attempts.
            delay = min(WATCH_RESTART_MAX_DELAY, 2.0**restarts)
            logging.getLogger(__name__).warning(
                "restarting Kopf to list and watch again (in %.0f s)", delay
            )
            await asyncio.sleep(delay)
    finally:
        if keeper is not None:
            keeper.remove_done_callback(_stop_acting_when_lost)
            keeper.cancel()
        if elector is not None:
            await elector.release()
        if client is not None:
            await client.aclose()


def _stop_acting_when_lost(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    logging.getLogger(__name__).critical(
        "this copy no longer holds the Lease: exiting before another copy takes over"
    )
    logging.shutdown()
    os._exit(LOST_LEASE_EXIT_CODE)


def render_mail(args: argparse.Namespace) -> int:
    from .invite_page import invite_link
    from .mail.render import MailContext, MailRenderer, expand_registration_url

    settings = _load_settings()
    if args.sign_up in ("password", "upstream"):
        settings = settings.model_copy(update={"mas_sign_up": args.sign_up})
    facts = _sign_up_facts(settings, offline=args.offline)
    sign_up = "synapse" if args.sign_up == "synapse" else facts.sign_up
    token = SecretStr(args.token)
    expires = dt.datetime.now(dt.UTC) + settings.default_validity
    server_name = args.server_name or facts.server_name or "example.org"
    locale = args.locale or settings.default_locale
    try:
        context = MailContext(
            email=args.email,
            display_name=args.display_name,
            token=token,
            registration_url=expand_registration_url(
                settings.registration_url, token=token, email=args.email
            ),
            expires_at=expires,
            usage_limit=args.usage_limit,
            inviter=settings.inviter_name or server_name,
            server_name=server_name,
            locale=locale,
            timezone=settings.mail_timezone,
            sign_up=sign_up,
            upstream_provider=facts.upstream_provider,
            provider_buttons=facts.provider_buttons,
            password_button=facts.password_button,
            email_code=facts.email_code and not args.no_email_code,
            captcha=facts.captcha or args.captcha,
            element_web_url=str(settings.element_web_url) if settings.element_web_url else None,
            invite_url=invite_link(str(settings.invite_page_url), locale, token)
            if settings.invite_page_url
            else None,
            enrollment_url=SecretStr(args.enrollment_url) if args.enrollment_url else None,
            account_url=str(settings.account_enrollment_url)
            if settings.account_enrollment_url
            else None,
            account_contact=settings.account_contact,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"cannot render the mail: {problems}") from None
    rendered = MailRenderer(settings.mail_template_dir).render(context)
    try:
        Path(args.html).write_text(rendered.html, encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the HTML part to {args.html}: {exc.strerror}"
        ) from None
    print(f"Subject: {rendered.subject}\n")
    print(rendered.text)
    print(f"(sign-up shape: {sign_up}, from {facts.source})", file=sys.stderr)
    print(f"(HTML part written to {args.html})", file=sys.stderr)
    return 0


def _sign_up_facts(settings: Settings, *, offline: bool) -> SignUpFacts:
    """What the operator would put in a mail now: the backend asked as `run` asks it (MAS's
    site-config and enabled upstream providers, through the same client), unless offline."""
    from .providers import KINDS

    kind = KINDS[settings.backend]
    if offline:
        return kind.sign_up_facts(settings)
    try:
        return run_in_loop(kind.read_sign_up(settings))
    except OperatorError as exc:
        raise ConfigurationError(
            f"cannot ask {kind.name} how invitees sign up ({exc}); run `doctor`, or preview "
            "with --offline from the settings alone"
        ) from None


def check_config(_: argparse.Namespace) -> int:
    from .runtime import build_mailer

    settings = _load_settings()
    settings.require_backend()  # and reads the backend's credential file
    build_mailer(settings)
    print("configuration OK")
    return 0


def doctor(_: argparse.Namespace) -> int:
    from .doctor import Finding, Verdict, run_doctor
    from .providers import KINDS

    try:
        settings = _load_settings()
        settings.require_backend()  # and reads the backend's credential file
    except ConfigurationError as problem:
        print(Finding(Verdict.FAIL, "settings", str(problem)).line())
        return 1
    where = KINDS[settings.backend].url(settings)
    print(
        Finding(
            Verdict.OK,
            "settings",
            f"backend {settings.backend} at {where}, sign-up "
            f"{settings.mas_sign_up or 'from MAS'}, server name "
            f"{settings.server_name or 'from MAS'}",
        ).line()
    )
    return run_in_loop(run_doctor(settings))


def serve_invite_page(_: argparse.Namespace) -> int:
    from .invite_page import build_invite_page
    from .invite_page.server import make_server

    settings = _load_settings()
    page = build_invite_page(settings)
    server = make_server(page, settings.bind_address, settings.invite_page_port)
    logging.getLogger(__name__).info(
        "serving the invite page on %s:%s", settings.bind_address, settings.invite_page_port
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matrix-invite-operator")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    run_parser = sub.add_parser("run", help="start the operator")
    run_parser.add_argument("--verbose", action="store_true")
    run_parser.set_defaults(func=run)

    mail = sub.add_parser("render-mail", help="print the invitation mail without sending it")
    mail.add_argument("--email", required=True)
    mail.add_argument("--display-name")
    mail.add_argument("--locale", choices=LOCALES)
    mail.add_argument("--usage-limit", type=int, default=1)
    mail.add_argument("--token", default="ExampleToken0123456789ab")
    mail.add_argument(
        "--sign-up",
        choices=["password", "upstream", "synapse"],
        help="which sign-up steps to show: MAS password registration, MAS through an upstream "
        "identity provider, or Element with Synapse (default: what the operator would pick: "
        "the settings, then MAS's site-config and upstream providers)",
    )
    mail.add_argument(
        "--offline",
        action="store_true",
        help="do not ask MAS (default: ask it as the operator does, when MATRIX_INVITE_MAS_URL "
        "is set): the sign-up shape then comes from the settings alone",
    )
    mail.add_argument(
        "--enrollment-url",
        help="a sample single-use enrollment link: the first step that creates the invitee's "
        "account at Authentik (with Authentik settings each mail carries its own)",
    )
    mail.add_argument(
        "--no-email-code",
        action="store_true",
        help="MAS requires no email verification (password_registration_email_required: false)",
    )
    mail.add_argument("--captcha", action="store_true", help="MAS's sign-up asks for a CAPTCHA")
    mail.add_argument("--server-name", help="default: MATRIX_INVITE_SERVER_NAME, else example.org")
    mail.add_argument("--html", default="invitation.html", help="where to write the HTML part")
    mail.set_defaults(func=render_mail)

    check = sub.add_parser("check-config", help="validate the environment's configuration")
    check.set_defaults(func=check_config)

    diagnose = sub.add_parser(
        "doctor",
        help="check MAS and SMTP step by step, as the operator will use them (writes nothing)",
    )
    diagnose.set_defaults(func=doctor)

    page = sub.add_parser(
        "serve-invite-page",
        help="serve the static invite page (reads no credentials; MATRIX_INVITE_INVITE_PAGE_*)",
    )
    page.set_defaults(func=serve_invite_page)

    args = parser.parse_args(argv)
    if args.func is not run:  # Kopf configures logging for `run` itself
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result: int = args.func(args)
    except OperatorError as exc:
        print(f"matrix-invite-operator: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
