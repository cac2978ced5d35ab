"""The MIME message a `Mailer` would send for a rendered mail, with that mailer's sender.

The operator builds its messages from the settings (`mail.invitation.SmtpInvitationMailer`);
the SMTP tests hold a `Mailer` instead and build them from its sender.
"""

from __future__ import annotations

from email.message import EmailMessage

from matrix_invite_operator.mail import Mailer, RenderedMail, build_message


def message_from(
    mailer: Mailer, rendered: RenderedMail, *, to_email: str, to_name: str | None, seed: str
) -> EmailMessage:
    return build_message(
        rendered,
        to_email=to_email,
        to_name=to_name,
        message_id_seed=seed,
        sender_email=mailer.sender_email,
        sender_name=mailer.sender_name,
    )
