"""Which process listens on a loopback TCP port, read from Linux's /proc.

Owns one question the harness asks after starting a server it gave a port: is that port now a
listening socket of *this* process, of another one, or of none yet? Ports are chosen by binding
to port 0 and releasing it (:func:`tests.controlplane.cluster._free_port`), so until the server
binds, any other process on the machine can be handed the same port. A server that binds some
ports only after its health probe has answered (source-controller's artifact server and
controller-runtime's metrics server do, and then exit) is only caught by asking who holds each
port. Reads the tables of the caller's network namespace, where every test server runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class PortHolders:
    """For each of some ports: listened on by the process, by another one, or by none yet."""

    mine: frozenset[int]
    others: frozenset[int]

    def missing(self, ports: set[int]) -> set[int]:
        return ports - self.mine


def _listening_sockets() -> dict[int, set[int]]:
    """Socket inodes of every listening TCP socket, by local port."""
    found: dict[int, set[int]] = {}
    for table in TCP_TABLES:
        try:
            with open(table, encoding="ascii") as rows:
                next(rows)  # the header
                for row in rows:
                    fields = row.split()
                    if fields[3] != TCP_LISTEN:
                        continue
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    found.setdefault(port, set()).add(int(fields[9]))
        except FileNotFoundError:  # no IPv6 in this namespace
            continue
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(fd_dir)
    except FileNotFoundError:  # exited
        return inodes
    for descriptor in descriptors:
        try:
            target = os.readlink(f"{fd_dir}/{descriptor}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def port_holders(pid: int, ports: set[int]) -> PortHolders:
    """Which of ``ports`` process ``pid`` listens on, and which another process holds."""
    listening = _listening_sockets()
    ours = _socket_inodes(pid)
    mine = {port for port in ports if listening.get(port, set()) & ours}
    others = {port for port in ports - mine if listening.get(port)}
    return PortHolders(frozenset(mine), frozenset(others))
