"""build_once: builds only when the cached directory is incomplete, never leaves half a build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane.build import BuildError, build_once


def complete(bin_dir: Path) -> bool:
    return (bin_dir / "tool").is_file()


def test_builds_once_then_reuses_and_rebuilds_what_was_deleted(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(staging: Path) -> None:
        builds.append(staging)
        (staging / "tool").write_text(f"build {len(builds)}")

    bin_dir = build_once(tmp_path / "key", complete, build, "a tool")
    assert bin_dir == tmp_path / "key" / "bin"
    assert (bin_dir / "tool").read_text() == "build 1"
    assert build_once(tmp_path / "key", complete, build, "a tool") == bin_dir
    assert len(builds) == 1

    (bin_dir / "tool").unlink()
    build_once(tmp_path / "key", complete, build, "a tool")
    assert (bin_dir / "tool").read_text() == "build 2"
    assert not builds[0].exists()


def test_a_failed_or_incomplete_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def failing(staging: Path) -> None:
        (staging / "half").write_text("")
        raise BuildError("go build failed")

    with pytest.raises(BuildError, match="go build failed"):
        build_once(tmp_path / "key", complete, failing, "a tool")
    with pytest.raises(BuildError, match=r"left .* incomplete"):
        build_once(tmp_path / "key", complete, lambda staging: None, "a tool")
    assert sorted(p.name for p in (tmp_path / "key").iterdir()) == [".lock"]
