"""The harness that starts the operator: a port taken between its pick and the bind.

Ports are picked free and released before the operator binds them; on a busy machine another
server may take one meanwhile (seen in a full run: Kopf's health reporter failed to bind and the
operator exited, failing a test that had nothing to do with ports). The harness starts it again
on fresh ports; this test takes the port on purpose.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.operator_process import PORT_TAKEN, OperatorProcess


def test_a_liveness_port_taken_before_the_bind_is_replaced(
    operator_env: dict[str, str], tmp_path: Path
) -> None:
    process = OperatorProcess(operator_env, tmp_path / "operator.log")
    taken = process.liveness_port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            process.start()
            assert process.liveness_port != taken
            assert process.starts == 2
            assert PORT_TAKEN in (tmp_path / "operator.log").read_text()
        finally:
            process.stop_after_cleanup()  # not about an orderly stop: no 5 s for idle workers
