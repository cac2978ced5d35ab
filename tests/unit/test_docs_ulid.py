"""The one-line ULID command of docs/install-ess.md makes a valid ULID of the current time."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GUIDE = REPO_ROOT / "docs" / "install-ess.md"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def guide_command() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r"<!-- command: ulid -->\n```sh\n(.+)\n```", text)
    assert match is not None, "install-ess.md lost its ULID command"
    return shlex.split(match.group(1))


def test_the_guides_ulid_command_prints_a_ulid_of_now() -> None:
    program, *args = guide_command()
    assert program == "python3"
    before = time.time()
    outputs = [
        subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        for _ in range(2)
    ]
    after = time.time()
    for ulid in outputs:
        assert ULID.fullmatch(ulid), ulid
        milliseconds = 0
        for character in ulid[:10]:
            milliseconds = milliseconds * 32 + CROCKFORD.index(character)
        assert before - 1 <= milliseconds / 1000 <= after + 1
    assert outputs[0] != outputs[1]
