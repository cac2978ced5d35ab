"""Fixtures of the browser tests: one headless Chromium per session, invite page servers on
loopback that record every request they receive.

A missing Chromium fails these tests (it never skips them): `make test` installs it through
`make chromium`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from matrix_invite_operator.invite_page import build_invite_page
from matrix_invite_operator.invite_page.server import (
    InvitePageHandler,
    InvitePageServer,
    make_server,
    serve_in_thread,
)
from matrix_invite_operator.settings import Settings

from tests.browser.chromium import INSTALL_HINT, Chromium, find_chromium

REGISTER = "https://auth.example.org/register"
SERVER_NAME = "example.org"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    executable = find_chromium()
    if executable is None:
        pytest.fail(INSTALL_HINT)
    browser = Chromium(executable)
    browser.start()
    try:
        yield browser
    finally:
        browser.stop()


@dataclass
class RunningPage:
    """An invite page server on 127.0.0.1 and what reached it (request lines and headers)."""

    server: InvitePageServer
    received: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


def page_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "registration_url": REGISTER,
        "element_web_url": "https://chat.example.org",
    }
    values.update(overrides)
    return Settings(**values)


def start_page_server(settings: Settings, *, prefill: bool | None = None) -> RunningPage:
    server = make_server(build_invite_page(settings, prefill=prefill), "127.0.0.1", 0)
    running = RunningPage(server)
    handler = cast(type[InvitePageHandler], server.RequestHandlerClass)

    def parse_request(self: Any) -> bool:
        ok: bool = handler.parse_request(self)
        running.received.append(f"{self.requestline}\n{self.headers}")
        return ok

    server.RequestHandlerClass = type("Recording", (handler,), {"parse_request": parse_request})
    serve_in_thread(server)
    return running


@pytest.fixture
def invite_page() -> Iterator[RunningPage]:
    running = start_page_server(page_settings())
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()


@pytest.fixture
def prefilling_invite_page() -> Iterator[RunningPage]:
    """A page as it is served for a MAS release that pre-fills tokens (none exists yet)."""
    running = start_page_server(page_settings(), prefill=True)
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()
