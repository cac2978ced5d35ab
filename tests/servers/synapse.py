"""A real Synapse homeserver for tests: pip-installed, SQLite, loopback only, started per session.

`SynapseServer` generates a config in a temporary directory (the settings in
`shared/reference/synapse/FACTS.md`: 127.0.0.1 on a free port, SQLite, raised rate limits,
`registration_requires_token: true`), starts `synapse.app.homeserver` in its own session, waits
(bounded) for `GET /health`, registers an admin with the shared secret and logs in for an admin
access token. `stop()` ends exactly the process it started, by PID (its process group).

It also plays the invitee and the outside admin: `register()` walks the client-server API's
three-step registration with a token, `admin` is an httpx client with the admin token for
direct calls to `/_synapse/admin/v1/registration_tokens`.

Standalone, for a demo:  python -m tests.servers.synapse [--dir DIR]
prints the URL and the admin token and runs until SIGTERM/Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from tests.operator_process import REPO_ROOT, free_port

SERVER_NAME = "test.local"
ADMIN_USER = "admin"
TOKENS_PATH = "/_synapse/admin/v1/registration_tokens"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

REGISTRATION_FRAGMENT = REPO_ROOT / "docs" / "examples" / "synapse" / "homeserver-registration.yaml"
_GENEROUS = {"per_second": 1000, "burst_count": 1000}


@dataclass
class Registration:
    """How one registration attempt with a token ended, and where."""

    ok: bool
    stage: str  # "token" (step 2) or "dummy" (step 3)
    status_code: int
    body: dict[str, Any] = field(repr=False)
    user_id: str | None = None

    @property
    def errcode(self) -> str | None:
        value = self.body.get("errcode")
        return value if isinstance(value, str) else None


class SynapseServer:
    """One Synapse process with its own directory, port, database and admin user."""

    def __init__(self, directory: Path | None = None, *, server_name: str = SERVER_NAME) -> None:
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="synapse-"))
        self.server_name = server_name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shared_secret = secrets.token_urlsafe(32)
        self.admin_password = secrets.token_urlsafe(16)
        self.admin_token = ""
        self.startup_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: httpx.Client | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.directory / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / "synapse.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> SynapseServer:
        started = time.monotonic()
        self._write_config()
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "--config-path",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_healthy(START_TIMEOUT)
            self._create_admin()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        process = self._process
        if process is not None and process.poll() is None:
            # Own session: signal the group so nothing it started survives.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SynapseServer:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _write_config(self) -> None:
        # Written whole rather than generated: `--generate-config` costs seconds (it imports all
        # of Synapse) and would still need most of these settings changed.
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        key_id = "a_" + secrets.token_hex(2)
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        (d / "signing.key").write_text(f"ed25519 {key_id} {seed}\n", encoding="utf-8")
        (d / "log.yaml").write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "formatters": {
                        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
                    },
                    "handlers": {
                        "console": {"class": "logging.StreamHandler", "formatter": "plain"}
                    },
                    "root": {"level": "WARNING", "handlers": ["console"]},
                    "disable_existing_loggers": False,
                }
            ),
            encoding="utf-8",
        )
        config = {
            "server_name": self.server_name,
            "pid_file": str(d / "homeserver.pid"),
            "listeners": [
                {
                    "bind_addresses": ["127.0.0.1"],
                    "port": self.port,
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "log_config": str(d / "log.yaml"),
            "media_store_path": str(d / "media_store"),
            "signing_key_path": str(d / "signing.key"),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            # The defaults answer 429 within a test suite.
            "rc_registration": _GENEROUS,
            "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
            "rc_registration_token_validity": _GENEROUS,
            # Onboarding tests create rooms, invite and join the admin again and again.
            "rc_invites": {"per_room": _GENEROUS, "per_user": _GENEROUS, "per_issuer": _GENEROUS},
            "rc_joins": {"local": _GENEROUS, "remote": _GENEROUS},
            "rc_joins_per_room": _GENEROUS,
            "rc_message": _GENEROUS,
        }
        # The registration lines docs/synapse.md tells admins to add: what the guide shows is what
        # every Synapse test runs with.
        config.update(yaml.safe_load(REGISTRATION_FRAGMENT.read_text(encoding="utf-8")))
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"synapse exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"synapse not healthy within {timeout}s:\n{self.log_tail()}")

    def _create_admin(self) -> None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "synapse._scripts.register_new_matrix_user",
                # `--option=value`: a random secret may begin with "-", which argparse would
                # take for an option of its own after a separate "-k" (it exits 2).
                f"--user={ADMIN_USER}",
                f"--password={self.admin_password}",
                "--admin",
                f"--shared-secret={self.shared_secret}",
                self.url,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.admin_token = self.login(ADMIN_USER, self.admin_password)

    # --- client-server API ----------------------------------------------------------------

    def login(self, username: str, password: str) -> str:
        answer = httpx.post(
            f"{self.url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": username},
                "password": password,
            },
            timeout=10,
        )
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token

    def register(
        self,
        token: str,
        *,
        username: str | None = None,
        password: str | None = None,
        finish: bool = True,
    ) -> Registration:
        """The three-step user-interactive registration with a token, as Element does it.

        `finish=False` stops after the token stage: the abandoned sign-up that holds a pending use.
        """
        username = username or f"user{secrets.token_hex(4)}"
        body: dict[str, Any] = {
            "username": username,
            "password": password or secrets.token_urlsafe(12),
        }
        url = f"{self.url}/_matrix/client/v3/register"
        with httpx.Client(timeout=10) as http:
            first = http.post(url, json=body)
            session = first.json().get("session")
            if first.status_code != 401 or not session:
                raise AssertionError(f"registration did not start a UIA session: {first.text}")
            second = http.post(
                url,
                json={
                    **body,
                    "auth": {
                        "type": "m.login.registration_token",
                        "token": token,
                        "session": session,
                    },
                },
            )
            document = second.json()
            if "m.login.registration_token" not in document.get("completed", []):
                return Registration(False, "token", second.status_code, document)
            if not finish:
                return Registration(False, "token", second.status_code, document)
            third = http.post(
                url, json={**body, "auth": {"type": "m.login.dummy", "session": session}}
            )
            document = third.json()
            return Registration(
                third.status_code == 200,
                "dummy",
                third.status_code,
                document,
                document.get("user_id"),
            )

    def token_valid(self, token: str) -> bool:
        answer = httpx.get(
            f"{self.url}/_matrix/client/v1/register/m.login.registration_token/validity",
            params={"token": token},
            timeout=10,
        )
        answer.raise_for_status()
        return bool(answer.json()["valid"])

    # --- admin API (the outside admin in tests) ---------------------------------------------

    @property
    def admin(self) -> httpx.Client:
        """An httpx client for the admin API, authenticated as the admin user."""
        if self._admin is None:
            self._admin = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=10,
            )
        return self._admin

    def tokens(self) -> list[dict[str, Any]]:
        answer = self.admin.get(TOKENS_PATH)
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()["registration_tokens"]
        return found

    def token(self, value: str) -> dict[str, Any] | None:
        answer = self.admin.get(f"{TOKENS_PATH}/{quote(value, safe='')}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    def set_token(self, value: str, **fields: Any) -> dict[str, Any]:
        answer = self.admin.put(f"{TOKENS_PATH}/{quote(value, safe='')}", json=fields)
        answer.raise_for_status()
        updated: dict[str, Any] = answer.json()
        return updated

    def delete_token(self, value: str) -> None:
        answer = self.admin.delete(f"{TOKENS_PATH}/{quote(value, safe='')}")
        if answer.status_code != 404:
            answer.raise_for_status()

    def delete_all_tokens(self) -> None:
        for token in self.tokens():
            self.delete_token(token["token"])

    # --- users, rooms and memberships (onboarding tests) --------------------------------------

    def create_user(
        self, username: str, *, admin: bool = False, password: str | None = None
    ) -> tuple[str, str]:
        """A user made by the admin API (no token needed); its Matrix ID and an access token."""
        user_id = f"@{username}:{self.server_name}"
        password = password or secrets.token_urlsafe(12)
        answer = self.admin.put(
            f"/_synapse/admin/v2/users/{quote(user_id)}",
            json={"password": password, "admin": admin},
        )
        answer.raise_for_status()
        return user_id, self.login(username, password)

    def bind_email(self, user_id: str, email: str) -> None:
        """Give an account its address, as a sign-up with email verification would."""
        answer = self.admin.put(
            f"/_synapse/admin/v2/users/{quote(user_id)}",
            json={"threepids": [{"medium": "email", "address": email}]},
        )
        answer.raise_for_status()

    def logout(self, token: str) -> None:
        httpx.post(
            f"{self.url}/_matrix/client/v3/logout",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def create_room(
        self, token: str, *, public: bool = False, space: bool = False, alias: str | None = None
    ) -> str:
        body: dict[str, Any] = {"preset": "public_chat" if public else "private_chat"}
        if space:
            body["creation_content"] = {"type": "m.space"}
        if alias is not None:
            body["room_alias_name"] = alias
        answer = httpx.post(
            f"{self.url}/_matrix/client/v3/createRoom",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        answer.raise_for_status()
        room_id: str = answer.json()["room_id"]
        return room_id

    def invite_and_join(
        self, owner_token: str, room_id: str, user_id: str, user_token: str
    ) -> None:
        """The owner invites the user, who joins, and gets the power to invite (50)."""
        headers = {"Authorization": f"Bearer {owner_token}"}
        base = f"{self.url}/_matrix/client/v3/rooms/{quote(room_id)}"
        httpx.post(
            f"{base}/invite", json={"user_id": user_id}, headers=headers, timeout=10
        ).raise_for_status()
        joined = httpx.post(
            f"{base}/join", json={}, headers={"Authorization": f"Bearer {user_token}"}, timeout=10
        )
        joined.raise_for_status()
        levels = httpx.get(f"{base}/state/m.room.power_levels/", headers=headers, timeout=10)
        levels.raise_for_status()
        content = levels.json()
        content.setdefault("users", {})[user_id] = 50
        httpx.put(
            f"{base}/state/m.room.power_levels/", json=content, headers=headers, timeout=10
        ).raise_for_status()

    def messages(self, room_id: str) -> list[str]:
        """The bodies of the room's messages, oldest first (through the admin API)."""
        answer = self.admin.get(
            f"/_synapse/admin/v1/rooms/{quote(room_id)}/messages", params={"dir": "f"}
        )
        answer.raise_for_status()
        return [
            e["content"]["body"] for e in answer.json()["chunk"] if e["type"] == "m.room.message"
        ]

    def membership(self, room_id: str, user_id: str) -> str | None:
        """The user's membership in the room as Synapse holds it (join, invite, leave...)."""
        answer = self.admin.get(f"/_synapse/admin/v1/rooms/{quote(room_id)}/state")
        answer.raise_for_status()
        for event in answer.json()["state"]:
            if event["type"] == "m.room.member" and event["state_key"] == user_id:
                membership: str = event["content"]["membership"]
                return membership
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="keep config and database here")
    args = parser.parse_args()
    server = SynapseServer(args.dir).start()
    print(f"synapse {server.url} (pid {server.pid}) up in {server.startup_seconds:.1f}s")
    print(f"admin token: {server.admin_token}", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and server.pid is not None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
