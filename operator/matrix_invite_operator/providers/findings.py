"""A line of `doctor`'s report (`Finding`: verdict, check, text), which each provider's checks
yield and `doctor` prints."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    verdict: Verdict
    check: str
    text: str

    def line(self) -> str:
        return f"{self.verdict.value:<4}  {self.check}: {self.text}"


def ok(check: str, text: str) -> Finding:
    return Finding(Verdict.OK, check, text)


def fail(check: str, text: str) -> Finding:
    return Finding(Verdict.FAIL, check, text)
