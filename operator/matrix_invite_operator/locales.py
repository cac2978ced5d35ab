"""The languages the operator speaks: one folder each under `mail/templates/`, found at import.

A locale is a folder `mail/templates/<locale>/` with the mail's templates (`subject.txt`,
`body.txt`, `body.html`, `enrollment.*`) and `strings.json` beside them: the language's name, its
weekday and month names, how it writes an expiry, and the invite page's texts. Adding a language
is adding such a folder; the CRD's `spec.locale` enum and the chart's `mail.defaultLocale` enum
list the folders too (tests compare them). Nothing here renders: `mail.render` and `invite_page`
read these strings.

Pure data and lookups (importlib.resources and json only), so every layer may use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

Locale = str
"""A locale code, e.g. "en": one of `LOCALES`."""

STRINGS_FILE = "strings.json"
#: How a locale's folder may be named (the CRD's spec.locale enum lists the real ones).
LOCALE_PATTERN = r"^[a-z]{2,3}(-[A-Z]{2})?$"


def _folders() -> tuple[Locale, ...]:
    templates = resources.files("matrix_invite_operator") / "mail" / "templates"
    return tuple(
        sorted(
            entry.name
            for entry in templates.iterdir()
            if entry.is_dir() and (entry / STRINGS_FILE).is_file()
        )
    )


LOCALES: tuple[Locale, ...] = _folders()
"""Every built-in locale, sorted (the folders of `mail/templates/` that have `strings.json`)."""


@dataclass(frozen=True)
class LocaleStrings:
    """What one language says outside the templates."""

    language_name: str  # in the language itself: "Deutsch"
    weekdays: tuple[str, ...]  # Monday first
    months: tuple[str, ...]  # January first
    # The expiry; fields {weekday} {day} {month} {year} {clock} {zone}. `expiry_utc` is used
    # when the zone is UTC (English writes "18:00 UTC", not "18:00 (UTC)").
    expiry: str
    expiry_utc: str
    invite_page: dict[str, str]  # the invite page's texts; {server} is the server name


def require_locale(value: str) -> Locale:
    """`value` if the operator has templates for it, else a ValueError naming those it has."""
    if value not in LOCALES:
        raise ValueError(
            f"no mail templates for locale {value!r}: the operator has {', '.join(LOCALES)}"
        )
    return value


@cache
def strings(locale: Locale) -> LocaleStrings:
    """The strings of a built-in locale (`mail/templates/<locale>/strings.json`)."""
    require_locale(locale)
    path = resources.files("matrix_invite_operator") / "mail" / "templates" / locale / STRINGS_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    found = LocaleStrings(
        language_name=raw["language_name"],
        weekdays=tuple(raw["weekdays"]),
        months=tuple(raw["months"]),
        expiry=raw["expiry"],
        expiry_utc=raw["expiry_utc"],
        invite_page=dict(raw["invite_page"]),
    )
    if len(found.weekdays) != 7 or len(found.months) != 12:
        raise ValueError(f"{locale}/{STRINGS_FILE}: 7 weekdays and 12 months, please")
    return found
