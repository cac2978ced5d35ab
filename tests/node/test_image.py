"""The operator's image as built from the Dockerfile (on a Debian base made with mmdebstrap):
what a Pod with the chart's security context gets.

Each check runs the image with a read-only root filesystem and no network, as the chart does.
"""

from __future__ import annotations

import json

import pytest

from tests.node.image import OperatorImage, podman, run_in_image

pytestmark = pytest.mark.integration

# Measured 228 MB in December 2026 (the Debian stand-in base without docs, plus the operator's
# virtualenv); the budget leaves room for a dependency or two, not for a toolchain.
SIZE_BUDGET_BYTES = 260 * 1000 * 1000
USER = "65532:65532"
# Commands that would let a process in the container install or build code.
INSTALLERS_AND_BUILD_TOOLS = (
    "pip", "pip3", "easy_install", "gcc", "cc", "c++", "g++", "make", "ld", "as", "git", "curl",
    "wget",
)  # fmt: skip


def test_image_size_is_within_its_budget(operator_image: OperatorImage) -> None:
    print(f"\noperator image {operator_image.name}: {operator_image.size_bytes / 1e6:.1f} MB")
    assert operator_image.size_bytes <= SIZE_BUDGET_BYTES, (
        f"the image is {operator_image.size_bytes / 1e6:.1f} MB, "
        f"over its budget of {SIZE_BUDGET_BYTES / 1e6:.0f} MB"
    )


def test_image_runs_as_65532_by_default(operator_image: OperatorImage) -> None:
    config = json.loads(podman("image", "inspect", operator_image.name))[0]["Config"]
    assert config.get("User") == USER
    ran = run_in_image(
        operator_image.name, "-c", "import os; print(os.getuid(), os.getgid())", entrypoint="python"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["65532", "65532"]


def test_version_and_doctor_help_work_on_a_read_only_root(operator_image: OperatorImage) -> None:
    version = run_in_image(operator_image.name, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip(), "--version printed nothing"
    doctor = run_in_image(operator_image.name, "doctor", "--help")
    assert doctor.returncode == 0, doctor.stderr
    assert "usage" in doctor.stdout.lower()


def test_nothing_outside_tmp_is_writable_for_the_operator(operator_image: OperatorImage) -> None:
    # Without --read-only: what the image itself lets user 65532 change. /tmp and /var/tmp are
    # sticky and world-writable in every Debian image; the chart mounts an emptyDir at /tmp.
    script = (
        "import os\n"
        "found = []\n"
        "for top in ('/opt', '/usr', '/etc', '/var', '/srv', '/home', '/root'):\n"
        "    for root, dirs, files in os.walk(top):\n"
        "        if root == '/var/tmp':\n"
        "            continue\n"
        "        found += [p for p in [root, *(os.path.join(root, f) for f in files)]\n"
        "                  if not os.path.islink(p) and os.access(p, os.W_OK)]\n"
        "print('\\n'.join(found))\n"
    )
    result = podman("run", "--rm", "--network", "none", "--entrypoint", "python",
                    operator_image.name, "-c", script)  # fmt: skip
    assert result.strip() == "", f"writable for the operator's user:\n{result[:2000]}"


def test_no_pip_and_no_build_tools_are_left(operator_image: OperatorImage) -> None:
    script = (
        "import glob, importlib.util, shutil, sys\n"
        f"tools = {INSTALLERS_AND_BUILD_TOOLS!r}\n"
        "left = [t for t in tools if shutil.which(t)]\n"
        "left += [m for m in ('pip', 'setuptools') if importlib.util.find_spec(m)]\n"
        "for top in ('/usr', '/opt'):\n"
        "    left += glob.glob(top + '/**/*.whl', recursive=True)\n"
        "print('\\n'.join(left))\n"
    )  # fmt: skip
    for python in ("python", "/usr/bin/python3"):
        ran = run_in_image(operator_image.name, "-c", script, entrypoint=python)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == "", f"{python} finds: {ran.stdout}"
