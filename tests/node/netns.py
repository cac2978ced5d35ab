"""A network and mount namespace of the test run's own, where the node and its control plane live.

Owns the namespace's life and the two ways into it:

- processes: :meth:`NetworkNamespace.command` prefixes a command with ``nsenter`` into both
  namespaces (the API server, etcd, containerd, kubelet, kube-proxy, kube-scheduler, helm and
  kubectl when they must reach an address inside);
- sockets of this Python process: :meth:`NetworkNamespace.call` runs a function in a thread that
  has joined the network namespace (a Linux namespace is per thread), so a server it creates
  (the MAS and SMTP doubles) listens inside, and :class:`PortForward` gives a port inside a twin
  on the host's 127.0.0.1 (the tests' own API requests, kubectl, helm).

The namespace is held by one ``sleep`` process started with ``unshare --net --mount``; it has only
loopback, which also carries :data:`NODE_IP` (the node's address, which the API server
advertises), and, once Pods run, the CNI bridge: no link leads out, so no packet from a Pod or
Service range can leave the machine. The mount namespace is private: what containerd, the kubelet
and CNI mount (Pod network namespaces, Secret volumes, overlay roots) and the system paths they
insist on (:data:`PRIVATE_DIRS`, each a tmpfs here) vanish with the last process in it. Stopping
kills the holder by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

NODE_IP = "10.77.0.1"
POD_SUBNET = "10.78.0.0/24"
SERVICE_SUBNET = "10.0.0.0/24"  # the control plane's --service-cluster-ip-range
KUBERNETES_SERVICE_IP = "10.0.0.1"
CLONE_NEWNET = 0x40000000
# System paths the node's parts write to whatever their configuration says; a tmpfs over each,
# inside the private mount namespace only.
PRIVATE_DIRS = (
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/opt/containerd",
)
T = TypeVar("T")


class NamespaceError(RuntimeError):
    """The namespace could not be made (no root, no unshare/nsenter/ip) or a step in it failed."""


def _require(tool: str) -> str:
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if os.access(f"/usr/sbin/{tool}", os.X_OK) else None
    )
    if path is None:
        raise NamespaceError(f"{tool!r} is not installed (util-linux / iproute2)")
    return path


class NetworkNamespace:
    """``with NetworkNamespace() as ns: subprocess.run(ns.command(["ip", "addr"]))``."""

    def __init__(self) -> None:
        self._holder: subprocess.Popen[bytes] | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    @property
    def pid(self) -> int:
        if self._holder is None:
            raise NamespaceError("namespace not started")
        return self._holder.pid

    @property
    def net_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside both namespaces (nsenter execs: the PID is the program's)."""
        return [_require("nsenter"), f"--net={self.net_path}", f"--mount=/proc/{self.pid}/ns/mnt",
                "--", *args]  # fmt: skip

    def run(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            self.command(args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise NamespaceError(f"{' '.join(args)} failed in the namespace: {result.stderr}")
        return result.stdout

    def start(self) -> NetworkNamespace:
        if os.geteuid() != 0:
            raise NamespaceError(
                "the node tests need root (network namespace, containerd, kubelet); run them as "
                "root, e.g. in CI's container, or with sudo"
            )
        for directory in PRIVATE_DIRS:
            os.makedirs(directory, exist_ok=True)  # mount points; stay empty on the host
        own_net = os.readlink("/proc/self/ns/net")
        self._holder = subprocess.Popen(
            [_require("unshare"), "--net", "--mount", "--propagation", "private", "--",
             "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(self.net_path) != own_net:
                    break
            if self._holder.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise NamespaceError("unshare --net --mount did not make a namespace")
            time.sleep(0.02)
        try:
            for directory in PRIVATE_DIRS:
                self.run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", directory)
            ip = _require("ip")
            self.run(ip, "link", "set", "lo", "up")
            # The node's address on loopback (this kernel has no `dummy` links): local to the
            # namespace, so Pods' packets to it through the bridge are delivered here.
            self.run(ip, "addr", "add", f"{NODE_IP}/32", "dev", "lo")
            # Pods reach the node's address through the bridge: forward between them.
            self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None and holder.poll() is None:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)

    def __enter__(self) -> NetworkNamespace:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` in a fresh thread inside the network namespace; threads and sockets it
        creates stay there."""
        result: list[T] = []
        failure: list[BaseException] = []

        def enter_and_run() -> None:
            try:
                fd = os.open(self.net_path, os.O_RDONLY)
                try:
                    if self._libc.setns(fd, CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise NamespaceError(f"setns: {os.strerror(errno)}")
                finally:
                    os.close(fd)
                result.append(function())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=enter_and_run, name="in-netns", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]


class PortForward:
    """Host ``127.0.0.1:port`` → ``127.0.0.1:port`` inside the namespace, byte for byte (TLS
    included), so one URL works on both sides."""

    def __init__(self, namespace: NetworkNamespace, port: int) -> None:
        self._namespace = namespace
        self.port = port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"forward-{port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self._namespace.call(
                lambda: socket.create_connection(("127.0.0.1", self.port), timeout=5)
            )
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)


def listening(namespace: NetworkNamespace, host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port`` inside the namespace."""

    def probe() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        return False

    return namespace.call(probe)


def unix_socket_ready(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
        sock.connect(str(path))
        return True
    return False
