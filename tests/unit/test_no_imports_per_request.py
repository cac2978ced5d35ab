"""Nothing is imported or looked up on the file system per HTTP request (issue 24).

httpcore asks `import sniffio` on every request which event loop runs it. Without sniffio
installed, each of those imports failed only after searching every directory of sys.path:
8 % of the operator's CPU in a burst of 1,000 Invitations. The requests go to the MAS double
on 127.0.0.1; a meta path finder records every module the import system had to look for.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

import httpx

from tests.doubles.mas import MasDouble


class _Recorder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.looked_for: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        self.looked_for.append(fullname)
        return None  # the other finders decide


def test_requests_import_nothing() -> None:
    async def requests(url: str) -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            (await client.get("/__double__/clock")).raise_for_status()  # first use may import
            recorder = _Recorder()
            sys.meta_path.insert(0, recorder)
            try:
                for _ in range(3):
                    (await client.get("/__double__/clock")).raise_for_status()
            finally:
                sys.meta_path.remove(recorder)
            return recorder.looked_for

    with MasDouble() as mas:
        assert asyncio.run(requests(mas.url)) == []
