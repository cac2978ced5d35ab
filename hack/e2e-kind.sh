#!/usr/bin/env bash
# End to end on kind (`make e2e-kind`): build the image, create a kind cluster, install the chart,
# run the MAS test double and an SMTP sink on this host, apply examples/invitation.yaml and wait
# until it is Ready with a mail delivered.
#
# Needs Docker. kind comes from PATH or is built from the Go module proxy; helm and kubectl are
# the ones the test suite builds (tests/controlplane/build.py). This project's CI has no Docker,
# so this script never runs there: run it on a workstation before a release.
#
#   KEEP=1 make e2e-kind     # leave the cluster and the doubles' logs behind for a look
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
CLUSTER=${CLUSTER:-matrix-invite-e2e}
IMAGE_REPO=matrix-invite-operator
IMAGE_TAG=e2e
NAMESPACE=matrix-invite
KIND_VERSION=${KIND_VERSION:-v0.30.0}
MAS_PORT=${MAS_PORT:-18081}
SMTP_PORT=${SMTP_PORT:-12525}
CLIENT_ID=01J44RKQYM4G3TNVANTMTDYTX6
KEEP=${KEEP:-0}

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || fail "docker is not on PATH"
docker info >/dev/null 2>&1 || fail "the Docker daemon is not reachable"
WORK=$(mktemp -d -t matrix-invite-e2e.XXXXXX)
PIDS=()
KIND=""
KUBECTL=""

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 && -n $KUBECTL && -f ${KUBECONFIG:-/nonexistent} ]]; then
    "$KUBECTL" -n "$NAMESPACE" get invitations,pods -o wide || true
    "$KUBECTL" -n "$NAMESPACE" logs deploy/matrix-invite-operator --tail=80 || true
    tail -n 40 "$WORK"/*.log || true
  fi
  if [[ $KEEP == 1 ]]; then
    echo "kept: kind cluster $CLUSTER, KUBECONFIG=$WORK/kubeconfig, logs in $WORK"
  else
    [[ -z $KIND ]] || "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  exit $status
}
trap cleanup EXIT

KIND_ON_PATH=$(command -v kind || true)
if [[ -z $KIND_ON_PATH ]]; then
  say "building kind $KIND_VERSION from the Go module proxy"
  GOBIN="$WORK/bin" go install "sigs.k8s.io/kind@$KIND_VERSION"
  KIND="$WORK/bin/kind"
else
  KIND=$KIND_ON_PATH
fi
HELM=$("$PYTHON" -c 'from tests.controlplane.build import ensure_helm; print(ensure_helm())')
KUBECTL=$("$PYTHON" -c 'from tests.controlplane.build import ensure_binaries; print(ensure_binaries().kubectl)')

say "building the image $IMAGE_REPO:$IMAGE_TAG"
docker build -t "$IMAGE_REPO:$IMAGE_TAG" .

say "creating kind cluster $CLUSTER"
export KUBECONFIG="$WORK/kubeconfig"
"$KIND" create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s
"$KIND" load docker-image "$IMAGE_REPO:$IMAGE_TAG" --name "$CLUSTER"

# Pods reach this host at the gateway of kind's Docker network; the doubles listen only there.
GATEWAY=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' \
  | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | head -n 1)
[[ -n $GATEWAY ]] || fail "cannot find the IPv4 gateway of Docker network 'kind'"

say "MAS double on $GATEWAY:$MAS_PORT, SMTP sink on $GATEWAY:$SMTP_PORT"
"$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$WORK/mas-client-secret"
"$PYTHON" -m tests.doubles.mas --host "$GATEWAY" --port "$MAS_PORT" \
  --client-id "$CLIENT_ID" --client-secret-file "$WORK/mas-client-secret" \
  --public-base "http://$GATEWAY:$MAS_PORT/" > "$WORK/mas.log" 2>&1 &
PIDS+=($!)
# Plain SMTP: the sink's certificate names only localhost, which a Pod cannot use.
"$PYTHON" -m tests.doubles.smtp --host "$GATEWAY" --port "$SMTP_PORT" --mode plain \
  --maildir "$WORK/mail" > "$WORK/smtp.log" 2>&1 &
PIDS+=($!)
for port in "$MAS_PORT" "$SMTP_PORT"; do
  for _ in $(seq 50); do
    "$PYTHON" -c "import socket,sys; socket.create_connection(('$GATEWAY', $port), 1)" 2>/dev/null \
      && break
    sleep 0.2
  done
done

say "installing the chart"
"$KUBECTL" create namespace "$NAMESPACE"
"$KUBECTL" -n "$NAMESPACE" create secret generic matrix-invite-operator-mas \
  --from-file=client-secret="$WORK/mas-client-secret"
"$HELM" install matrix-invite-operator charts/matrix-invite-operator \
  --namespace "$NAMESPACE" --wait --timeout 3m \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --set mas.url="http://$GATEWAY:$MAS_PORT" --set mas.clientId="$CLIENT_ID" \
  --set mas.clientSecret.existingSecret=matrix-invite-operator-mas \
  --set smtp.host="$GATEWAY" --set smtp.port="$SMTP_PORT" --set smtp.tls=none \
  --set mail.from=invitations@example.org --set syncIntervalSeconds=5

say "applying examples/invitation.yaml"
"$KUBECTL" -n "$NAMESPACE" apply -f examples/invitation.yaml
"$KUBECTL" -n "$NAMESPACE" wait invitation/ada --for=condition=Ready --timeout=120s
"$KUBECTL" -n "$NAMESPACE" get invitations -o wide
for _ in $(seq 50); do compgen -G "$WORK/mail/*.eml" >/dev/null && break; sleep 0.2; done
compgen -G "$WORK/mail/*.eml" >/dev/null || fail "no mail reached the SMTP sink"
"$KUBECTL" -n "$NAMESPACE" get --raw "/api/v1/namespaces/$NAMESPACE/services/matrix-invite-operator-metrics:metrics/proxy/metrics" \
  | grep '^matrix_invite_invitations{phase="Sent"} 1.0$' >/dev/null \
  || fail "the metrics do not show one Sent Invitation"
say "e2e-kind: OK (the Invitation is Ready, the mail was delivered, metrics agree)"
