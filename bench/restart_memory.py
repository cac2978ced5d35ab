"""Restart memory of several operator versions, against the same settled Invitations.

``bench/run.py --restart-with`` compares one other version per run, and every run fills its
Invitations anew (about 4 minutes for 5,000 on 2 cores). This script fills once, with the code
in the working tree, then restarts the operator with each version in turn, ``--rounds`` times,
and prints a table: peak RSS (VmHWM) and RSS once idle, seconds to idle, and the MAS writes,
mails and Kubernetes writes each restart made (which must all be 0)::

    .venv/bin/python bench/restart_memory.py HEAD~3 HEAD .            # 5,000 Invitations
    .venv/bin/python bench/restart_memory.py --invitations 1000 --rounds 3 .

A version is a git revision (its ``operator/`` is exported with ``git archive``) or ``.`` for the
working tree. The processes are bench/run.py's: the real control plane, the MAS and SMTP doubles
and the operator, each its own process on 127.0.0.1, stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from matrix_invite_operator.kube import kube_http_client
from matrix_invite_operator.kube_identity import KubeLogin

from bench.run import (
    NAMESPACE,
    Child,
    MasProcess,
    Restart,
    SmtpProcess,
    Stack,
    Watcher,
    measure_burst,
    measure_restart,
    wait_idle,
)
from tests.controlplane.build import ensure_binaries
from tests.controlplane.cluster import ControlPlane
from tests.operator_process import REPO_ROOT


@dataclass
class Row:
    version: str
    restart: Restart


def export_version(version: str, into: Path) -> str:
    """A PYTHONPATH that imports `matrix_invite_operator` as it is at `version`."""
    if version == ".":
        return str(REPO_ROOT / "operator")
    target = into / version.replace("/", "_").replace("~", "-")
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", version, "operator"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return str(target / "operator")


async def measure(args: argparse.Namespace) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="matrix-invite-restart-memory-"))
    versions = {v: export_version(v, workdir / "versions") for v in args.versions}
    children: list[Child] = []
    stack: Stack | None = None
    rows: list[Row] = []
    try:
        with ControlPlane(binaries=ensure_binaries(), workdir=workdir / "controlplane") as cp:
            cp.apply_crds(REPO_ROOT / "crds")
            cp.kubectl("create", "namespace", NAMESPACE)
            mas = MasProcess(workdir)
            children.append(mas)
            smtp = SmtpProcess(workdir)
            children.append(smtp)
            kube = await kube_http_client(KubeLogin(kubeconfig=cp.kubeconfig_path))
            kube.timeout = httpx.Timeout(60.0, connect=10.0)
            stack = Stack(workdir, cp, mas, smtp, kube, args.sync_interval, None, "raw")
            async with kube:
                watcher = Watcher(kube, NAMESPACE)
                await watcher.start()
                try:
                    stack.start_operator()
                    print(f"fill: {args.invitations} Invitations with the working tree", flush=True)
                    fill = await measure_burst(
                        stack, watcher, "fill", args.invitations, args.timeout * 5
                    )
                    if fill.sent != args.invitations:
                        raise RuntimeError(f"only {fill.sent} of {args.invitations} were Sent")
                    print(f"  all Sent after {fill.total_seconds:.1f} s", flush=True)
                    await wait_idle(stack.operator_pid, lambda: True, args.timeout)
                    print_header()
                    for round_ in range(args.rounds):
                        for version, pythonpath in versions.items():
                            stack.restart_pythonpath = pythonpath
                            restart = await measure_restart(
                                stack, watcher, args.invitations, args.timeout
                            )
                            rows.append(Row(version, restart))
                            print_row(round_ + 1, rows[-1])
                finally:
                    await watcher.stop()
    finally:
        if stack is not None and stack.operator is not None:
            stack.operator.stop()
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def print_header() -> None:
    print(
        f"{'round':>5} {'version':<14} {'VmHWM MiB':>9} {'VmRSS MiB':>9} {'idle s':>6} "
        f"{'MAS writes':>10} {'mails':>5} {'API writes':>10}"
    )


def print_row(round_: int, row: Row) -> None:
    r = row.restart
    idle = f"{r.seconds_to_idle:.1f}" if r.seconds_to_idle is not None else "never"
    print(
        f"{round_:>5} {row.version:<14} {r.vm_hwm_mib:>9.1f} {r.vm_rss_mib:>9.1f} {idle:>6} "
        f"{r.mas_writes:>10} {r.mails:>5} {sum(r.kube_writes.values()):>10}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("versions", nargs="+", help="git revisions, or . for the working tree")
    parser.add_argument("--invitations", type=int, default=5000, help="settled Invitations")
    parser.add_argument("--rounds", type=int, default=2, help="restarts per version")
    parser.add_argument("--sync-interval", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=600, help="per wait, seconds")
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args))
    clean = all(
        r.restart.mas_writes == 0 and r.restart.mails == 0 and not r.restart.kube_writes
        for r in rows
    )
    return 0 if clean and rows else 1


if __name__ == "__main__":
    sys.exit(main())
