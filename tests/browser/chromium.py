"""Headless Chromium driven through the DevTools protocol, for the invite page's tests.

`find_chromium` locates Debian's package (`make chromium` installs it; CHROMIUM overrides the
path); `Chromium` starts it on a loopback DevTools port chosen by Chromium itself, in a private
profile, and stops it by PID. `Page` is one tab attached through aiohttp's websocket client (a
dependency already, through Kopf): commands, events, and the network log of every request the
tab makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

INSTALL_HINT = (
    "headless Chromium is required for the invite page's browser tests: run `make chromium` "
    "(Debian: apt-get install chromium) or set CHROMIUM to its path"
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 15.0


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    pass


@dataclass
class Page:
    """One tab: send commands, collect events."""

    ws: aiohttp.ClientWebSocketResponse
    session_id: str
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            waiter = self._waiting.pop(data.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session_id
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = waiter
        await self.ws.send_str(json.dumps(message))
        answer = await asyncio.wait_for(waiter, COMMAND_TIMEOUT)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        self.events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_for(lambda: self._loads() > 0, f"load of {url}")

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + COMMAND_TIMEOUT
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise CdpError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    def _loads(self) -> int:
        return sum(e["method"] == "Page.loadEventFired" for e in self.events)

    async def follow(self, selector: str) -> None:
        """Click a link and wait until the page it leads to has loaded."""
        before = self._loads()
        await self.click(selector)
        await self.wait_for(lambda: self._loads() > before, f"load after clicking {selector}")

    async def wait_for_text(self, selector: str, text: str) -> None:
        """Wait until the element's text contains `text`."""
        expression = f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''"
        deadline = asyncio.get_running_loop().time() + COMMAND_TIMEOUT
        while text not in (shown := await self.evaluate(expression)):
            if asyncio.get_running_loop().time() > deadline:
                raise CdpError(f"{selector} shows {shown!r}, never {text!r}")
            await asyncio.sleep(0.05)

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (a user gesture, as copying needs)."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    def requests(self) -> list[dict[str, Any]]:
        """Every request the tab sent, as Network.requestWillBeSent reported it."""
        return [e["params"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


class Chromium:
    """A headless Chromium process with its DevTools websocket on 127.0.0.1."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self._profile = tempfile.TemporaryDirectory(prefix="invite-page-chromium-")
        self.process: subprocess.Popen[str] | None = None
        self.ws_url = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--headless=new",
                "--no-sandbox",  # containers without user namespaces; the page is our own
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ws_url = self._read_endpoint()

    def _read_endpoint(self) -> str:
        assert self.process is not None
        assert self.process.stderr is not None
        seen: list[str] = []
        timer = _Deadline(START_TIMEOUT, self.process)
        try:
            for line in self.process.stderr:
                seen.append(line)
                match = _LISTENING.search(line)
                if match:
                    return match.group(1)
        finally:
            timer.cancel()
        self.stop()
        raise CdpError("Chromium did not open its DevTools port:\n" + "".join(seen[-20:]))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self._profile.cleanup()

    @contextlib.asynccontextmanager
    async def page(
        self, *, width: int = 1280, height: int = 900, mobile: bool = False
    ) -> AsyncIterator[Page]:
        """A fresh tab with the network log on and clipboard access granted for its origin."""
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(self.ws_url, max_msg_size=0) as ws,
        ):
            page = Page(ws, session_id="")
            page.start()
            target = await page.send("Target.createTarget", session=False, url="about:blank")
            attached = await page.send(
                "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
            )
            page.session_id = attached["sessionId"]
            await page.send(
                "Browser.grantPermissions",
                session=False,
                permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
            )
            for domain in ("Page", "Network", "Runtime"):
                await page.send(f"{domain}.enable")
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=mobile,
            )
            await page.send("Emulation.setFocusEmulationEnabled", enabled=True)
            try:
                yield page
            finally:
                with contextlib.suppress(CdpError, TimeoutError):
                    await page.send(
                        "Target.closeTarget", session=False, targetId=target["targetId"]
                    )
                if page._reader is not None:
                    page._reader.cancel()


class _Deadline:
    """Kills the process group if Chromium has not started within `seconds`."""

    def __init__(self, seconds: float, process: subprocess.Popen[str]) -> None:
        import threading

        self._timer = threading.Timer(seconds, self._kill, args=(process,))
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def cancel(self) -> None:
        self._timer.cancel()


__all__ = ["INSTALL_HINT", "CdpError", "Chromium", "Page", "find_chromium"]
