"""The invitation mail: what it says (`render`) and how it reaches the invitee (`send`).

`MailRenderer` turns a `MailContext` into a `RenderedMail` (subject, text, HTML) from sandboxed,
admin-overridable Jinja templates in English or German; `build_message` wraps it into a
MIME message with a deterministic Message-ID, and `Mailer.send` delivers it over verified TLS,
raising `MailTemporaryError` or `MailRejectedError` from `matrix_invite_operator.errors`.
"""

from __future__ import annotations

from ..locales import LOCALES, Locale
from .render import (
    MailContext,
    MailRenderer,
    RenderedMail,
    expand_registration_url,
    format_expiry,
    validate_registration_url_template,
)
from .send import Mailer, TlsMode, build_message, message_id_for

__all__ = [
    "LOCALES",
    "Locale",
    "MailContext",
    "MailRenderer",
    "Mailer",
    "RenderedMail",
    "TlsMode",
    "build_message",
    "expand_registration_url",
    "format_expiry",
    "message_id_for",
    "validate_registration_url_template",
]
