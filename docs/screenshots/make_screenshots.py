"""Screenshots of the invitation mail's HTML part, English and German, for docs/mail.md.

Renders the built-in templates through the operator's own `MailRenderer` with fixed sample
data (so the images only change when the templates do), then photographs each HTML file with
headless Chromium:

    apt-get install chromium        # Debian's package; only needed to make these images
    .venv/bin/python docs/screenshots/make_screenshots.py [--chromium PATH] [--keep-html]

Writes invitation-en.png and invitation-de.png next to this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from matrix_invite_operator.mail import LOCALES, Locale, MailContext, MailRenderer
from pydantic import SecretStr

HERE = Path(__file__).resolve().parent
WINDOW = "800,1250"
# (display name, address, time zone of the expiry)
SAMPLES: dict[Locale, tuple[str, str, str]] = {
    "en": ("Ada Lovelace", "ada@example.org", "UTC"),
    "de": ("Jörg Müller", "joerg@example.org", "Europe/Berlin"),
}


def render(locale: Locale) -> str:
    display_name, address, timezone = SAMPLES[locale]
    context = MailContext(
        email=address,
        display_name=display_name,
        token=SecretStr("q7Rk2Lm9Xw4ZpT8vNc3Hs6Bd"),
        registration_url="https://auth.example.org/register",
        expires_at=dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC),
        usage_limit=1,
        inviter="Example Matrix Team",
        server_name="example.org",
        locale=locale,
        timezone=timezone,
        element_web_url="https://chat.example.org",
    )
    return MailRenderer().render(context).html


def screenshot(chromium: str, html: Path, png: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={WINDOW}",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not png.is_file():
        raise SystemExit(f"chromium wrote no screenshot to {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--keep-html", action="store_true", help="also keep the rendered HTML")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="invitation-html-") as tmp:
        for locale in LOCALES:
            html = Path(tmp) / f"invitation-{locale}.html"
            html.write_text(render(locale), encoding="utf-8")
            png = HERE / f"invitation-{locale}.png"
            screenshot(args.chromium, html, png)
            if args.keep_html:
                shutil.copy(html, HERE / html.name)
            print(f"wrote {png.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
