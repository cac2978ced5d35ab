"""A small client for the homeserver's own APIs: joining, inviting and posting as an actor.

The account lookup goes through the token backend; what happens *in* Matrix after sign-up goes
through here, with an access token the caller lends for one call (`onboarding.ActingSessions`:
the Synapse admin token, or a short MAS personal session). The token is sent as a header and
never appears in an error text. Errors are `MatrixError` with Synapse's own `errcode` and text,
which status shows per room; a connection failure is `BackendUnavailable`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from .errors import BackendError, BackendUnavailable

ADMIN_JOIN_PATH = "/_synapse/admin/v1/join/"
CLIENT_PATH = "/_matrix/client/v3"
_MAX_ERROR_TEXT = 300


class MatrixError(BackendError):
    """The homeserver refused: its HTTP status, `errcode` and `error` text."""

    def __init__(self, status: int, errcode: str | None, error: str) -> None:
        super().__init__(f"{status} {errcode or 'no errcode'}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error


class HomeserverClient:
    """Synapse's client-server and admin APIs over a caller-owned httpx client."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"homeserver URL must be http(s)://..., got {base_url!r}")
        self._http = http
        self._root = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._root!r})"

    async def admin_join(self, room: str, user_id: str, token: SecretStr) -> str:
        """Join `user_id` to `room` (ID or alias) with Synapse's admin API; the room's ID."""
        path = ADMIN_JOIN_PATH + quote(room, safe="")
        answer = await self._request("POST", path, token, {"user_id": user_id}, "admin join")
        return str(answer.get("room_id") or room)

    async def invite(self, room: str, user_id: str, token: SecretStr) -> str:
        """Invite `user_id` into `room`; an alias is resolved first. The room's ID."""
        room_id = await self.resolve(room, token)
        path = f"{CLIENT_PATH}/rooms/{quote(room_id, safe='')}/invite"
        await self._request("POST", path, token, {"user_id": user_id}, "invite")
        return room_id

    async def resolve(self, room: str, token: SecretStr) -> str:
        if not room.startswith("#"):
            return room
        path = f"{CLIENT_PATH}/directory/room/{quote(room, safe='')}"
        answer = await self._request("GET", path, token, None, "alias lookup")
        return str(answer["room_id"])

    async def send_notice(self, room: str, text: str, token: SecretStr) -> None:
        room_id = await self.resolve(room, token)
        txn = secrets.token_hex(12)
        path = f"{CLIENT_PATH}/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}"
        await self._request("PUT", path, token, {"msgtype": "m.notice", "body": text}, "notice")

    async def _request(
        self,
        method: str,
        path: str,
        token: SecretStr,
        body: dict[str, Any] | None,
        what: str,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                self._root + path,
                json=body,
                headers={
                    "Accept": "application/json",
                    "Authorization": f"Bearer {token.get_secret_value()}",
                },
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"No answer from the homeserver at {self._root} to the {what} "
                f"({type(exc).__name__})",
                retry_after=10.0,
            ) from exc
        try:
            document = json.loads(response.content) if response.content else {}
        except ValueError:
            document = None
        if 200 <= response.status_code < 300 and isinstance(document, dict):
            return document
        errcode: str | None = None
        error = " ".join(response.text.split())[:_MAX_ERROR_TEXT] or "no error text"
        if isinstance(document, dict):
            code, text = document.get("errcode"), document.get("error")
            errcode = code if isinstance(code, str) else None
            error = text[:_MAX_ERROR_TEXT] if isinstance(text, str) else error
        raise MatrixError(response.status_code, errcode, error)
