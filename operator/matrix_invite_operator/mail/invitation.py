"""The invitation mail for one Invitation and token: context, rendering, addressing, sending.

This is the `InvitationMailer` the reconciler calls; it joins the operator's settings (who
invites, where to register, which time zone) with the Invitation (who is invited, in which
language) and hands the finished message to the SMTP `Mailer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ..backends import TokenState
from ..settings import Settings
from ..sign_up import SignUpFacts
from .render import MailContext, MailRenderer, expand_registration_url, invite_link
from .send import Mailer, build_message
from .throttle import MailThrottle

if TYPE_CHECKING:
    from ..ports import Invitation


class SmtpInvitationMailer:
    """Renders with `MailRenderer` and sends with `Mailer`, at most as fast as `throttle` allows
    (`None`: no limit)."""

    def __init__(
        self,
        settings: Settings,
        renderer: MailRenderer,
        mailer: Mailer,
        throttle: MailThrottle | None = None,
        *,
        sign_up: Callable[[], SignUpFacts],
    ) -> None:
        self._settings = settings
        # What the backend says about sign-up now (`sign_up.SiteWatch`), or the settings alone.
        self._sign_up = sign_up
        self._renderer = renderer
        self._mailer = mailer
        self.throttle = throttle

    def context_for(
        self,
        invitation: Invitation,
        *,
        token: SecretStr,
        token_state: TokenState,
        enrollment_url: SecretStr | None = None,
    ) -> MailContext:
        settings = self._settings
        spec = invitation.spec
        facts = self._sign_up()
        server_name = facts.require_server_name()
        locale = spec.locale or settings.default_locale
        return MailContext(
            email=spec.email,
            display_name=spec.display_name,
            token=token,
            registration_url=expand_registration_url(
                settings.registration_url, token=token, email=spec.email
            ),
            expires_at=token_state.expires_at,
            usage_limit=spec.usage_limit,
            inviter=settings.inviter_name or server_name,
            server_name=server_name,
            locale=locale,
            timezone=settings.mail_timezone,
            sign_up=facts.sign_up,
            upstream_provider=facts.upstream_provider,
            provider_buttons=facts.provider_buttons,
            password_button=facts.password_button,
            email_code=facts.email_code,
            captcha=facts.captcha,
            element_web_url=str(settings.element_web_url) if settings.element_web_url else None,
            invite_url=invite_link(str(settings.invite_page_url), locale, token)
            if settings.invite_page_url
            else None,
            enrollment_url=enrollment_url,
            account_url=str(settings.account_enrollment_url)
            if settings.account_enrollment_url
            else None,
            account_contact=settings.account_contact,
        )

    async def send_invitation(
        self,
        invitation: Invitation,
        *,
        token: SecretStr,
        token_state: TokenState,
        enrollment_url: SecretStr | None = None,
    ) -> None:
        rendered = self._renderer.render(
            self.context_for(
                invitation, token=token, token_state=token_state, enrollment_url=enrollment_url
            )
        )
        message = build_message(
            rendered,
            to_email=invitation.spec.email,
            to_name=invitation.spec.display_name,
            # Same token, same thread: a resend keeps the Message-ID, a new token starts afresh.
            message_id_seed=f"{invitation.uid}:{token_state.id}",
            sender_email=self._settings.mail_from,
            sender_name=self._settings.mail_from_name,
        )
        # After rendering, so a broken template or address never uses up a slot; raises
        # MailThrottled when this Invitation has to wait for its turn.
        if self.throttle is not None:
            await self.throttle.acquire(invitation.uid)
        await self._mailer.send(message)

    async def aclose(self) -> None:
        """Hang up the SMTP sessions kept for the next mail (at shutdown)."""
        await self._mailer.aclose()
