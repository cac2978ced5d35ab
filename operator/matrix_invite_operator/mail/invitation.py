"""The invitation mail for one Invitation and token: context, rendering, addressing, sending.

This is the `InvitationMailer` the reconciler calls; it joins the operator's settings (who
invites, where to register, which time zone) with the Invitation (who is invited, in which
language) and hands the finished message to the SMTP `Mailer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from ..backends import TokenState
from ..settings import Settings
from .render import MailContext, MailRenderer, SignUp, expand_registration_url
from .send import Mailer, build_message
from .throttle import MailThrottle

if TYPE_CHECKING:
    from ..reconcile import Invitation


def sign_up_for(settings: Settings) -> SignUp:
    """Where the invitee types the token in: Element (Synapse), or MAS's web UI after a password
    registration or after logging in at an upstream identity provider."""
    if settings.backend == "synapse":
        return "synapse"
    return "mas-upstream" if settings.mas_sign_up == "upstream" else "mas-password"


class SmtpInvitationMailer:
    """Renders with `MailRenderer` and sends with `Mailer`, at most as fast as `throttle` allows
    (`None`: no limit)."""

    def __init__(
        self,
        settings: Settings,
        renderer: MailRenderer,
        mailer: Mailer,
        throttle: MailThrottle | None = None,
    ) -> None:
        self._settings = settings
        self._renderer = renderer
        self._mailer = mailer
        self.throttle = throttle

    def context_for(
        self, invitation: Invitation, *, token: SecretStr, token_state: TokenState
    ) -> MailContext:
        settings = self._settings
        spec = invitation.spec
        return MailContext(
            email=spec.email,
            display_name=spec.display_name,
            token=token,
            registration_url=expand_registration_url(
                settings.registration_url, token=token, email=spec.email
            ),
            expires_at=token_state.expires_at,
            usage_limit=spec.usage_limit,
            inviter=settings.inviter_name or settings.server_name,
            server_name=settings.server_name,
            locale=spec.locale or settings.default_locale,
            timezone=settings.mail_timezone,
            sign_up=sign_up_for(settings),
            upstream_provider=settings.mas_upstream_provider_name,
        )

    async def send_invitation(
        self, invitation: Invitation, *, token: SecretStr, token_state: TokenState
    ) -> None:
        rendered = self._renderer.render(
            self.context_for(invitation, token=token, token_state=token_state)
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
