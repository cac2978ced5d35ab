"""The invite page in a real browser (headless Chromium, driven through the DevTools protocol):
the token from the fragment in both languages, copying exactly the token, the continue button to
MAS's /register, no request that carries the token, no JavaScript, a phone's width, the keyboard.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from matrix_invite_operator.mail import Locale

from tests.browser.chromium import Chromium, Page
from tests.browser.conftest import REGISTER, SERVER_NAME, RunningPage

# Characters a fragment must carry intact; MAS compares tokens case-sensitively.
TOKEN = "Zq7Rk2Lm9Xw4Pb8Tn3Vc6Hd1"
HEADINGS: dict[Locale, tuple[str, str, str]] = {
    "en": ("You are invited to example.org", "How to sign up", "Continue to sign-up"),
    "de": (
        "Sie sind zu example.org eingeladen",
        "So funktioniert die Registrierung",
        "Weiter zur Registrierung",
    ),
}


async def text_of(page: Page, selector: str) -> Any:
    return await page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
        "return e ? e.innerText : null; })()"
    )


async def visible(page: Page, selector: str) -> Any:
    return await page.evaluate(f"document.querySelector({json.dumps(selector)}).checkVisibility()")


@pytest.mark.parametrize("locale", ["en", "de"])
async def test_the_page_shows_the_token_from_the_fragment_in_both_languages(
    chromium: Chromium, invite_page: RunningPage, locale: Locale
) -> None:
    heading, steps, button = HEADINGS[locale]
    async with chromium.page() as page:
        await page.navigate(f"{invite_page.base}/{locale}/#{TOKEN}")
        assert await page.evaluate("document.documentElement.lang") == locale
        assert await page.evaluate("document.getElementById('token').value") == TOKEN
        assert await visible(page, "#token-section")
        assert not await visible(page, "#no-token")
        assert await text_of(page, "h1") == heading
        assert SERVER_NAME in await page.evaluate("document.title")
        assert await text_of(page, ".steps h2") == steps
        assert await text_of(page, "#continue") == button
        # The token box is labelled for screen readers, and described by its help text.
        assert await page.evaluate("document.getElementById('token').labels.length") == 1
        assert (
            await page.evaluate("document.getElementById('token').getAttribute('aria-describedby')")
            == "token-help"
        )


async def test_the_root_follows_the_browsers_language(
    chromium: Chromium, invite_page: RunningPage
) -> None:
    async with chromium.page() as page:
        await page.send(
            "Network.setExtraHTTPHeaders", headers={"Accept-Language": "de-DE,en;q=0.5"}
        )
        await page.navigate(f"{invite_page.base}/#{TOKEN}")
        assert await page.evaluate("document.documentElement.lang") == "de"
        assert await page.evaluate("document.getElementById('token').value") == TOKEN
        # Switching the language keeps the token: the link carries the fragment along.
        await page.follow("nav a[hreflang=en]")
        assert await page.evaluate("location.pathname + location.hash") == f"/en/#{TOKEN}"


@pytest.mark.parametrize(
    ("locale", "fragment", "confirmation"),
    [
        ("en", TOKEN, "Token copied."),
        ("de", f"%20{TOKEN}%20", "Token kopiert."),  # escaped blanks around it: the bare token
    ],
    ids=["en", "de-escaped-blanks"],
)
async def test_the_copy_button_puts_exactly_the_token_on_the_clipboard(
    chromium: Chromium, invite_page: RunningPage, locale: Locale, fragment: str, confirmation: str
) -> None:
    async with chromium.page() as page:
        await page.navigate(f"{invite_page.base}/{locale}/#{fragment}")
        assert await page.evaluate("document.getElementById('token').value") == TOKEN
        await page.evaluate("navigator.clipboard.writeText('something else')")
        assert await page.evaluate("navigator.clipboard.readText()") == "something else"

        await page.click("#copy")
        await page.wait_for_text("#copy-status", confirmation)

        assert await page.evaluate("navigator.clipboard.readText()") == TOKEN


async def test_the_continue_button_points_at_mas_register(
    chromium: Chromium, invite_page: RunningPage
) -> None:
    async with chromium.page() as page:
        await page.navigate(f"{invite_page.base}/en/#{TOKEN}")
        assert await page.evaluate("document.getElementById('continue').href") == REGISTER


async def test_with_a_mas_that_prefills_tokens_the_button_carries_it(
    chromium: Chromium, prefilling_invite_page: RunningPage
) -> None:
    async with chromium.page() as page:
        await page.navigate(f"{prefilling_invite_page.base}/en/#{TOKEN}")
        assert (
            await page.evaluate("document.getElementById('continue').href")
            == f"{REGISTER}?token={TOKEN}"
        )
        assert await visible(page, "#prefill-note")


async def test_no_request_carries_the_token(chromium: Chromium, invite_page: RunningPage) -> None:
    async with chromium.page() as page:
        await page.navigate(f"{invite_page.base}/en/#{TOKEN}")
        await page.click("#copy")
        await page.wait_for_text("#copy-status", "Token copied.")
        await page.follow("nav a[hreflang=de]")  # a second navigation, fragment kept
        assert await page.evaluate("document.getElementById('token').value") == TOKEN
        requests = page.requests()

    urls = [r["request"]["url"] for r in requests]
    # Both documents, their stylesheet and script: the log is not empty for want of looking.
    assert f"{invite_page.base}/en/" in urls
    assert f"{invite_page.base}/de/" in urls
    assert f"{invite_page.base}/static/invite.js" in urls
    assert f"{invite_page.base}/static/invite.css" in urls
    for sent in requests:
        request = sent["request"]
        assert TOKEN not in request["url"]
        assert TOKEN not in json.dumps(request.get("headers", {}))
        assert TOKEN not in request.get("postData", "")
        assert request.get("headers", {}).get("Referer", "") == ""  # no-referrer

    # And on the wire, as the server received it: request lines and every header.
    assert len(invite_page.received) >= 4
    assert not [line for line in invite_page.received if TOKEN in line]
    assert not [line for line in invite_page.received if "referer:" in line.lower()]


async def test_without_javascript_the_page_says_what_to_do_with_the_mails_code(
    chromium: Chromium, invite_page: RunningPage
) -> None:
    async with chromium.page() as page:
        await page.send("Emulation.setScriptExecutionDisabled", value=True)
        await page.navigate(f"{invite_page.base}/en/#{TOKEN}")
        body = await page.evaluate("document.body.innerText")
        assert "copy the registration token from that email" in body
        assert not await visible(page, "#token-section")
        assert await page.evaluate("document.getElementById('continue').href") == REGISTER


async def test_on_a_phone_nothing_overflows_and_the_buttons_are_large(
    chromium: Chromium, invite_page: RunningPage
) -> None:
    async with chromium.page(width=360, height=740, mobile=True) as page:
        await page.navigate(f"{invite_page.base}/de/#{TOKEN}")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        for selector in ("#copy", "#continue"):
            height = await page.evaluate(
                f"document.querySelector('{selector}').getBoundingClientRect().height"
            )
            assert height >= 44  # a comfortable touch target
        token_font = await page.evaluate(
            "parseFloat(getComputedStyle(document.getElementById('token')).fontSize)"
        )
        assert token_font >= 18


async def test_the_keyboard_reaches_the_token_copy_and_continue_in_order(
    chromium: Chromium, invite_page: RunningPage
) -> None:
    async with chromium.page() as page:
        await page.navigate(f"{invite_page.base}/en/#{TOKEN}")
        reached = []
        for _ in range(6):
            await page.send(
                "Input.dispatchKeyEvent",
                type="rawKeyDown",
                key="Tab",
                code="Tab",
                windowsVirtualKeyCode=9,
            )
            await page.send(
                "Input.dispatchKeyEvent",
                type="keyUp",
                key="Tab",
                code="Tab",
                windowsVirtualKeyCode=9,
            )
            reached.append(
                await page.evaluate("document.activeElement.id || document.activeElement.tagName")
            )
        assert reached.index("token") < reached.index("copy") < reached.index("continue"), reached
        # Pressing Enter on the focused copy button copies, as a click does.
        await page.evaluate("document.getElementById('copy').focus()")
        for kind in ("keyDown", "keyUp"):
            await page.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                text="\r" if kind == "keyDown" else "",
            )
        await page.wait_for_text("#copy-status", "Token copied.")
        assert await page.evaluate("navigator.clipboard.readText()") == TOKEN


# WCAG 2 contrast of an element's text against the nearest opaque background behind it.
CONTRAST = """
(selector) => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const ch = [r, g, b].map((v) => { v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
  };
  const el = document.querySelector(selector);
  let bg = el, colour;
  while (bg) {
    colour = rgb(getComputedStyle(bg).backgroundColor);
    if (colour.length < 4 || colour[3] > 0) break;
    bg = bg.parentElement;
  }
  const fg = lum(rgb(getComputedStyle(el).color));
  const back = lum(bg ? colour : [255, 255, 255]);
  return (Math.max(fg, back) + 0.05) / (Math.min(fg, back) + 0.05);
}
"""


@pytest.mark.parametrize(
    "selector",
    ["h1", "#token", "#copy", "#continue", "#token-help", ".steps li", "footer p", "nav a"],
)
async def test_text_meets_wcag_aa_contrast(
    chromium: Chromium, invite_page: RunningPage, selector: str
) -> None:
    async with chromium.page() as page:
        await page.navigate(f"{invite_page.base}/en/#{TOKEN}")
        ratio = await page.evaluate(f"({CONTRAST})({json.dumps(selector)})")
        assert ratio >= 4.5, f"{selector}: {ratio:.2f}:1"
