"""The invite page: a static, localized page that shows an invitee the token from the URL's
fragment (`https://<invite host>/<locale>/#<token>`), the sign-up steps the mail shows, and a
button to MAS's registration.

`page` renders the page once at startup from the settings (no credentials, no MAS access);
`server` serves it with `matrix-invite-operator serve-invite-page`. The token never reaches a
server: browsers do not send the fragment, the page's script reads it locally, and the page
makes no request that carries it.
"""

from __future__ import annotations

from .page import InvitePage, build_invite_page, invite_link, prefills_token

__all__ = ["InvitePage", "build_invite_page", "invite_link", "prefills_token"]
