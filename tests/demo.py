"""`make demo`: the whole path on one machine, with embedded defaults and nothing to configure.

Starts the test control plane (etcd, kube-apiserver, kube-controller-manager on 127.0.0.1),
the MAS test double, an SMTP sink with STARTTLS and the real operator process; applies
`examples/invitation.yaml`; waits until it is Ready; prints `kubectl get invitations` and the
mail that arrived; stops everything by PID. `--keep` leaves it all running until Ctrl-C, with a
kubeconfig to explore (`kubectl --kubeconfig ... describe inv ada`).
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.controlplane.build import ensure_binaries
from tests.controlplane.cluster import ControlPlane
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.operator_process import REPO_ROOT, OperatorProcess

NAMESPACE = "matrix"
EXAMPLE = REPO_ROOT / "examples" / "invitation.yaml"
CLIENT_ID = "01J44RKQYM4G3TNVANTMTDYTX6"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def wait_ready(cp: ControlPlane, name: str, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cp.kubectl("-n", NAMESPACE, "get", "invitation", name, "-o", "json", check=False)
        if result.returncode == 0:
            body = json.loads(result.stdout)
            status = body.get("status") or {}
            if status.get("phase") in {"Sent", "Failed"}:
                return dict(status)
        time.sleep(0.5)
    raise SystemExit(f"the invitation {name} was not Ready within {timeout}s")


def operator_env(
    cp: ControlPlane, namespace: str, mas: MasDouble, smtp: SmtpDouble, workdir: Path
) -> dict[str, str]:
    """The demo operator's settings: the doubles' addresses, the credential files in `workdir`."""
    host, port = smtp.address
    return {
        "KUBECONFIG": str(cp.kubeconfig_path),
        "MATRIX_INVITE_NAMESPACES": namespace,
        "MATRIX_INVITE_MAS_URL": mas.url,
        "MATRIX_INVITE_MAS_CLIENT_ID": CLIENT_ID,
        "MATRIX_INVITE_MAS_CLIENT_SECRET_FILE": str(workdir / "mas-client-secret"),
        "MATRIX_INVITE_SMTP_HOST": host,
        "MATRIX_INVITE_SMTP_PORT": str(port),
        "MATRIX_INVITE_SMTP_USERNAME": "operator",
        "MATRIX_INVITE_SMTP_PASSWORD_FILE": str(workdir / "smtp-password"),
        "MATRIX_INVITE_SMTP_CA_BUNDLE": str(smtp.ca_path),
        "MATRIX_INVITE_MAIL_FROM": "invitations@example.org",
        "MATRIX_INVITE_MAIL_FROM_NAME": "Example Matrix",
        "MATRIX_INVITE_SERVER_NAME": "example.org",
        "MATRIX_INVITE_REGISTRATION_URL": "https://auth.example.org/register",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args()

    banner("Building (first time only) and starting the local control plane")
    workdir = Path(tempfile.mkdtemp(prefix="matrix-invite-demo-"))
    client_secret = secrets.token_urlsafe(24)
    smtp_password = secrets.token_urlsafe(16)
    (workdir / "mas-client-secret").write_text(client_secret)
    (workdir / "smtp-password").write_text(smtp_password)

    with (
        ControlPlane(binaries=ensure_binaries()) as cp,
        MasDouble(client_id=CLIENT_ID, client_secret=client_secret) as mas,
        SmtpDouble(mode="starttls", username="operator", password=smtp_password) as smtp,
    ):
        cp.apply_crds(REPO_ROOT / "crds")
        cp.kubectl("create", "namespace", NAMESPACE)
        env = operator_env(cp, NAMESPACE, mas, smtp, workdir)
        operator = OperatorProcess(env, workdir / "operator.log")
        banner(f"Starting the operator (log: {operator.log_path})")
        with operator:
            banner(f"kubectl apply -f {EXAMPLE.relative_to(REPO_ROOT)}")
            print(cp.kubectl("-n", NAMESPACE, "apply", "-f", str(EXAMPLE)).stdout, end="")
            status = wait_ready(cp, "ada")

            banner("kubectl get invitations")
            print(cp.kubectl("-n", NAMESPACE, "get", "invitations").stdout, end="")
            banner("kubectl get invitations -o wide")
            print(cp.kubectl("-n", NAMESPACE, "get", "inv", "-o", "wide").stdout, end="")
            banner("Events (kubectl describe invitation ada)")
            describe = cp.kubectl("-n", NAMESPACE, "describe", "invitation", "ada").stdout
            print(describe[describe.find("Events:") :], end="")

            banner("The mail that arrived at the SMTP sink")
            (mail,) = smtp.wait_for_sync(1, timeout=10)
            print(f"To: {mail.message['To']}\nSubject: {mail.subject}\n")
            print(mail.text)
            banner("MAS double: registration tokens")
            for token in mas.tokens():
                shown = {k: v for k, v in token.items() if k != "token"}
                print(json.dumps(shown, default=str))
            print(f"(the token value lives only in Secret {status['secretName']} and the mail)")

            if args.keep:
                kubeconfig = cp.kubeconfig_path
                banner(
                    f"Still running. Try: kubectl --kubeconfig {kubeconfig} -n {NAMESPACE} get inv"
                )
                print("Ctrl-C stops everything.", flush=True)
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
    banner("Stopped the operator, the doubles and the control plane")
    return 0 if status.get("phase") == "Sent" else 1


if __name__ == "__main__":
    sys.exit(main())
