"""`make demo-gitops`: an Invitation's way from Git to a mail, through the real Flux controllers.

Starts the test control plane, Flux's source-controller and kustomize-controller (built from the
Go module proxy), a Git server on 127.0.0.1 with docs/install-flux.md's layout (``.sops.yaml``,
ESS's and the operator's SOPS-encrypted Secrets, the two Kustomizations), the MAS test double,
an SMTP sink and the operator. Then commits ``examples/invitation.yaml`` (encrypted as the guide
says), shows Flux applying it, ``kubectl get inv``, the Kustomization's Ready and the mail; removes
the file and shows Flux pruning the Invitation and the operator revoking its token. Everything it
started is stopped by PID at the end; ``--keep`` leaves it running until Ctrl-C.
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
from tests.controlplane.flux_build import ensure_flux
from tests.demo import CLIENT_ID, banner, operator_env
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.gitops.flux import FluxControllers, ready_condition
from tests.gitops.git_server import GitServer
from tests.gitops.loop import INVITATIONS_KUSTOMIZATION, close_loop, open_loop
from tests.gitops.repository import INVITATIONS_DIR, AgeKey
from tests.operator_process import REPO_ROOT, OperatorProcess

NAMESPACE = "matrix-invite"
EXAMPLE = REPO_ROOT / "examples" / "invitation.yaml"


def show_kustomizations(cp: ControlPlane) -> None:
    print(
        cp.kubectl("-n", NAMESPACE, "get", "gitrepositories,kustomizations").stdout,
        end="",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args()

    banner("Building (first time only: ~10 min for Flux) and starting the local control plane")
    started = time.monotonic()
    binaries, tools = ensure_binaries(), ensure_flux()
    workdir = Path(tempfile.mkdtemp(prefix="matrix-invite-demo-gitops-"))
    client_secret, smtp_password = secrets.token_urlsafe(24), secrets.token_urlsafe(16)
    (workdir / "mas-client-secret").write_text(client_secret)
    (workdir / "smtp-password").write_text(smtp_password)

    with (
        ControlPlane(binaries=binaries) as cp,
        FluxControllers(cp, tools, workdir / "flux") as flux,
        GitServer(workdir / "git") as git,
        MasDouble(client_id=CLIENT_ID, client_secret=client_secret) as mas,
        SmtpDouble(mode="starttls", username="operator", password=smtp_password) as smtp,
    ):
        cp.apply_crds(REPO_ROOT / "crds")
        cp.kubectl("create", "namespace", NAMESPACE)
        print(f"Flux controllers running: {flux.pids()}; Git repository: {git.url}")

        banner("Committing docs/install-flux.md's layout: .sops.yaml, encrypted Secrets")
        key = AgeKey(tools.age_keygen, workdir / "age.agekey")
        loop = open_loop(cp, NAMESPACE, git, tools.sops, key, (client_secret, smtp_password))
        show_kustomizations(cp)

        env = operator_env(cp, NAMESPACE, mas, smtp, workdir)
        operator = OperatorProcess(env, workdir / "operator.log")
        banner(f"Starting the operator (log: {operator.log_path})")
        with operator:
            path = f"{INVITATIONS_DIR}/ada.yaml"
            banner(f"git commit {path} (examples/invitation.yaml, sops-encrypted)")
            commit = loop.commit({path: EXAMPLE.read_text()}, "Invite Ada")
            print(f"commit {commit}; what Git holds:")
            print("\n".join(git.show(path).splitlines()[:12]) + "\n  ...")

            banner("Flux applies it and waits for the Invitation's health check")
            applied = loop.invitations_kustomization(commit=commit, timeout=120)
            print(f"Kustomization {INVITATIONS_KUSTOMIZATION}: {ready_condition(applied)}")
            show_kustomizations(cp)
            banner("kubectl get inv")
            print(cp.kubectl("-n", NAMESPACE, "get", "inv", "-o", "wide").stdout, end="")
            banner("The mail that arrived at the SMTP sink")
            (mail,) = smtp.wait_for_sync(1, timeout=10)
            print(f"To: {mail.message['To']}\nSubject: {mail.subject}\n")
            print(mail.text)

            banner(f"git rm {path}: Flux prunes the Invitation, the operator revokes the token")
            removed = loop.commit({path: None}, "Ada no longer invited")
            pruned = loop.invitations_kustomization(commit=removed, timeout=120)
            print(f"Kustomization {INVITATIONS_KUSTOMIZATION}: {ready_condition(pruned)}")
            print(cp.kubectl("-n", NAMESPACE, "get", "inv").stderr, end="")
            banner("MAS double: registration tokens")
            for token in mas.tokens():
                print(json.dumps({k: v for k, v in token.items() if k != "token"}, default=str))

            if args.keep:
                banner(f"Still running. Try: kubectl --kubeconfig {cp.kubeconfig_path} get inv -A")
                print("Ctrl-C stops everything.", flush=True)
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            tokens = mas.tokens()
            close_loop(loop)
    revoked = bool(tokens) and all(token["revoked_at"] is not None for token in tokens)
    banner(f"Stopped everything it started; {time.monotonic() - started:.0f} s in all")
    return 0 if revoked else 1


if __name__ == "__main__":
    sys.exit(main())
