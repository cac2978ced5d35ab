"""Command line for the test control plane, for demos and manual poking.

``python -m tests.controlplane up --state-dir DIR [--crds PATH] [--identity USER=GROUP,GROUP ...]``
builds the binaries if needed, starts etcd, kube-apiserver and kube-controller-manager on
127.0.0.1, applies the CRDs, writes ``DIR/kubeconfig`` (admin), ``DIR/kubeconfig-<user>`` per
identity and ``DIR/pids`` (one ``PID NAME`` per line), then stays in the foreground until SIGTERM
or SIGINT and stops every child. It exits non-zero if a child dies on its own.

``python -m tests.controlplane build`` only builds and prints the bin directory.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tests.controlplane.build import BuildError, ensure_binaries
from tests.controlplane.cluster import ControlPlane, ControlPlaneError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _parse_identity(text: str) -> tuple[str, list[str]]:
    user, _, groups = text.partition("=")
    if not user:
        raise argparse.ArgumentTypeError(f"expected USER=GROUP,GROUP, got {text!r}")
    return user, [g for g in groups.split(",") if g]


def _up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    # Installed before starting so a signal during the slow start-up still stops cleanly.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    identities = dict(args.identity or [])
    cp = ControlPlane(identities, workdir=state_dir, keep_workdir=True)
    try:
        cp.start()
        crds: Path = args.crds
        if crds.exists() and (crds.is_file() or any(crds.glob("*.y*ml"))):
            for name in cp.apply_crds(crds):
                print(f"applied {name}", flush=True)
        for user in identities:
            print(f"kubeconfig for {user}: {cp.kubeconfig_for(user)}", flush=True)
        pids = cp.pids()
        (state_dir / "pids").write_text("".join(f"{pid} {name}\n" for name, pid in pids.items()))
        print(f"control plane up at {cp.server_url}", flush=True)
        print(f"export KUBECONFIG={cp.kubeconfig_path}", flush=True)
        print(f"kubectl: {cp.binaries.kubectl}", flush=True)
        while not stop_requested.wait(1.0):
            dead = sorted(set(pids) - set(cp.pids()))
            if dead:
                print(f"{', '.join(dead)} exited; see logs in {state_dir}", file=sys.stderr)
                return 1
        return 0
    except (BuildError, ControlPlaneError) as exc:
        print(f"control plane failed: {exc}", file=sys.stderr)
        return 1
    finally:
        cp.stop()
        (state_dir / "pids").unlink(missing_ok=True)
        print("control plane stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.controlplane", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a control plane in the foreground until SIGTERM/SIGINT")
    up.add_argument(
        "--state-dir", type=Path, required=True, help="working directory (data, logs, kubeconfigs)"
    )
    up.add_argument(
        "--crds", type=Path, default=REPO_ROOT / "crds", help="CRD file or directory to apply"
    )
    up.add_argument(
        "--identity",
        type=_parse_identity,
        action="append",
        metavar="USER=GROUP,GROUP",
        help="extra static identity (repeatable); gets DIR/kubeconfig-USER",
    )
    sub.add_parser("build", help="build the binaries if needed and print their directory")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            print(ensure_binaries().bin_dir)
        except BuildError as exc:
            print(f"BUILD FAILED: {exc}", file=sys.stderr)
            return 1
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
