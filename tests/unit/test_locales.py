"""Locales are the folders of mail/templates/ with a strings.json; each language's strings live
there beside its templates, and every other place that lists locales agrees with the folders.

Adding a language is: the folder (templates and strings.json), and the two schema enums these
tests name (the CRD's spec.locale, the chart's mail.defaultLocale), nothing in the code.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from matrix_invite_operator import locales
from matrix_invite_operator.locales import LOCALES, STRINGS_FILE, strings
from matrix_invite_operator.mail.render import TEMPLATE_FILES, format_expiry
from matrix_invite_operator.models import InvitationSpec
from matrix_invite_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "operator" / "matrix_invite_operator" / "mail" / "templates"


def test_the_locales_are_the_template_folders() -> None:
    folders = sorted(p.name for p in TEMPLATES.iterdir() if (p / STRINGS_FILE).is_file())
    assert list(LOCALES) == folders == ["de", "en"]
    for locale in LOCALES:
        for name in TEMPLATE_FILES:
            assert (TEMPLATES / locale / name).is_file(), f"{locale}/{name}"
        assert strings(locale).invite_page.keys() == strings("en").invite_page.keys()


def test_the_schemas_list_the_same_locales() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "invitations.matrix-invite.dev.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["locale"]["enum"] == list(LOCALES)
    chart = json.loads(
        (ROOT / "charts" / "matrix-invite-operator" / "values.schema.json").read_text()
    )
    assert chart["properties"]["mail"]["properties"]["defaultLocale"]["enum"] == list(LOCALES)


def test_a_locale_without_templates_is_refused_everywhere() -> None:
    with pytest.raises(ValueError, match="no mail templates for locale 'fr'"):
        InvitationSpec.model_validate({"email": "a@example.org", "locale": "fr"})
    with pytest.raises(ValueError, match="the operator has de, en"):
        Settings(default_locale="fr")
    assert InvitationSpec.model_validate({"email": "a@example.org", "locale": "de"}).locale == "de"


def test_the_expiry_comes_from_each_language_s_strings() -> None:
    moment = dt.datetime(2026, 12, 4, 17, 0, tzinfo=dt.UTC)
    assert format_expiry(moment, locale="en") == "Friday, 4 December 2026, 17:00 UTC"
    assert format_expiry(moment, locale="de", timezone="Europe/Berlin") == (
        "Freitag, 4. Dezember 2026, 18:00 Uhr (Europe/Berlin, UTC+1)"
    )


def test_a_new_folder_is_a_new_locale(tmp_path: Path) -> None:
    """Copy the package, add a folder `fr` (templates copied from en), and ask a fresh
    interpreter which locales there are and how it writes an expiry."""
    package = tmp_path / "matrix_invite_operator"
    shutil.copytree(Path(locales.__file__).parent, package)
    french = package / "mail" / "templates" / "fr"
    shutil.copytree(package / "mail" / "templates" / "en", french)
    words = json.loads((french / STRINGS_FILE).read_text())
    words.update(
        language_name="Français",
        weekdays=["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"],
        expiry="{weekday} {day} {month} {year}, {clock} ({zone})",
        expiry_utc="{weekday} {day} {month} {year}, {clock} UTC",
    )
    (french / STRINGS_FILE).write_text(json.dumps(words))
    probe = (
        "import datetime as dt\n"
        "from matrix_invite_operator.locales import LOCALES\n"
        "from matrix_invite_operator.mail.render import format_expiry\n"
        "print(LOCALES)\n"
        "print(format_expiry(dt.datetime(2026, 12, 4, 17, tzinfo=dt.UTC), locale='fr'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PYTHONSAFEPATH": ""},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "('de', 'en', 'fr')",
        "vendredi 4 December 2026, 17:00 UTC",
    ]
