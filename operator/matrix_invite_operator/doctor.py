"""`matrix-invite-operator doctor`: checks a setup end to end, one line per step, fix included.

Owns the order of the checks: the backend's (its provider kind's `doctor_checks`, such as
`providers.mas_doctor`), authentik's, then SMTP's. They talk to the backend and the SMTP relay
exactly as the operator does (the same settings, HTTP client, OAuth flow, Admin API client and
mailer), so a green run means the first Invitation will not fail on configuration. Nothing is
written anywhere: no token is created, no mail is sent; with authentik configured, one probe
invitation that expired before it was made is added and deleted (only that proves the role).
No line ever contains a secret: the texts come from our own error tree, which never quotes one.

The backend's checks stop at their first failure (each needs the one before); SMTP is checked
anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable

from .authentik import setup_checks
from .errors import ConfigurationError, MailError, OperatorError
from .mail.send import Mailer
from .providers import KINDS
from .providers.findings import Finding, Verdict, fail, ok
from .runtime import authentik_http_client, build_authentik
from .settings import Settings

__all__ = ["Doctor", "Finding", "Verdict", "run_doctor"]


class Doctor:
    """Runs the checks for one `Settings`; `findings()` yields each line as soon as it is known."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def findings(self) -> AsyncGenerator[Finding]:
        settings = self.settings
        async for finding in KINDS[settings.backend].doctor_checks(settings):
            yield finding
        if settings.authentik_enabled:
            for finding in await self._authentik():
                yield finding
        yield await self._smtp()

    async def _authentik(self) -> list[Finding]:
        """authentik's side (`authentik.setup_checks`): the one write is an expired probe."""
        try:
            async with authentik_http_client(self.settings) as http:
                checks = await setup_checks(build_authentik(self.settings, http))
        except ConfigurationError as exc:
            return [fail("authentik", str(exc))]
        return [Finding(Verdict(c.verdict), c.check, c.text) for c in checks]

    # --- SMTP -------------------------------------------------------------------------------

    async def _smtp(self) -> Finding:
        settings = self.settings
        try:
            mailer = Mailer.from_settings(settings)
            await mailer.verify()
        except (MailError, OperatorError) as exc:
            fix = (
                " (MATRIX_INVITE_SMTP_USERNAME and MATRIX_INVITE_SMTP_PASSWORD_FILE; chart values "
                "smtp.username, smtp.password.existingSecret and .key)"
                if "login" in str(exc).lower()
                else ""
            )
            return fail("smtp", f"{exc}{fix}")
        tls = {"starttls": "STARTTLS", "implicit": "implicit TLS", "none": "no TLS"}
        login = (
            f"login as {settings.smtp_username} accepted"
            if settings.smtp_username
            else "no login configured"
        )
        return ok(
            "smtp",
            f"{settings.smtp_host}:{settings.smtp_port} with {tls[settings.smtp_tls]}, {login} "
            "(nothing sent)",
        )


async def run_doctor(settings: Settings, emit: Callable[[str], None] = print) -> int:
    """Emit every finding's line as it comes; 1 when any check failed, else 0."""
    failed = False
    async with contextlib.aclosing(Doctor(settings).findings()) as findings:
        async for finding in findings:
            emit(finding.line())
            failed |= finding.verdict is Verdict.FAIL
    return 1 if failed else 0
