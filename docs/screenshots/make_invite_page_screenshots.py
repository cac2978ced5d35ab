"""Screenshots of the invite page, desktop and phone width, English and German, for
docs/invite-page.md and the README.

Serves the page with the operator's own page server on 127.0.0.1 (fixed sample settings, so the
images only change when the page does), opens it with a sample token in the fragment in headless
Chromium through the DevTools protocol (the client the browser tests use), and captures the
whole page:

    make chromium                   # Debian's package
    .venv/bin/python docs/screenshots/make_invite_page_screenshots.py

Writes invite-page-{desktop,phone}-{en,de}.png next to this script.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: tests.browser's CDP client

from matrix_invite_operator.invite_page import build_invite_page  # noqa: E402
from matrix_invite_operator.invite_page.server import make_server, serve_in_thread  # noqa: E402
from matrix_invite_operator.mail import LOCALES  # noqa: E402
from matrix_invite_operator.settings import Settings  # noqa: E402

from tests.browser.chromium import INSTALL_HINT, Chromium, find_chromium  # noqa: E402

SAMPLE_TOKEN = "q7Rk2Lm9Xw4ZpT8vNc3Hs6Bd"  # noqa: S105 (a made-up sample)
# (name, width, height, phone)
VIEWPORTS = (("desktop", 1024, 900, False), ("phone", 390, 844, True))


async def capture(browser: Chromium, base: str) -> None:
    for locale in LOCALES:
        for name, width, height, phone in VIEWPORTS:
            async with browser.page(width=width, height=height, mobile=phone) as page:
                await page.navigate(f"{base}/{locale}/#{SAMPLE_TOKEN}")
                shot = await page.send(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=True
                )
            png = HERE / f"invite-page-{name}-{locale}.png"
            png.write_bytes(base64.b64decode(shot["data"]))
            print(f"wrote {png.relative_to(HERE.parents[1])}")


def main() -> int:
    executable = find_chromium()
    if executable is None:
        raise SystemExit(INSTALL_HINT)
    settings = Settings(
        server_name="example.org",
        registration_url="https://auth.example.org/register",
        element_web_url="https://chat.example.org",  # type: ignore[arg-type]
    )
    server = make_server(build_invite_page(settings), "127.0.0.1", 0)
    serve_in_thread(server)
    browser = Chromium(executable)
    browser.start()
    try:
        host, port = server.server_address[:2]
        asyncio.run(capture(browser, f"http://{host!s}:{port}"))
    finally:
        browser.stop()
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
