# The README names two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install lint format test unit controlplane chromium node-packages node demo demo-gitops clean chart-crds deploy-manifests e2e-kind

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Builds etcd, kube-apiserver, kube-controller-manager, kubectl, the kstatus checker
# (tests/kstatus), helm (for tests/deploy), Flux's kustomize- and source-controller, sops and age
# (for tests/gitops) from the Go module proxy into ~/.cache/matrix-invite-operator (once per pinned
# version; the first build takes minutes).
controlplane: install
	$(BIN)/python -m tests.controlplane.build

# Headless Chromium for tests/browser (the invite page) and docs/screenshots: Debian's package.
# The browser tests fail, never skip, without it; CHROMIUM=/path/to/chrome uses another build.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; }

# The real node of tests/node: Debian's container runtime and image tools (podman builds the
# operator's image on a base mmdebstrap makes; containerd, runc, the CNI plugins and iptables run
# the Pods), then kubelet, kube-proxy and kube-scheduler built like the control plane, and the
# operator's image (before the suite: its first build must not compete with timed waits).
NODE_PACKAGES := podman runc containerd containernetworking-plugins iptables mmdebstrap
node-packages:
	@command -v podman >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1 \
	  && command -v mmdebstrap >/dev/null 2>&1 && [ -x /usr/sbin/runc ] && [ -x /usr/sbin/iptables ] \
	  && [ -x /usr/lib/cni/bridge ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_PACKAGES); \
	  else sudo apt-get update -qq \
	    && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_PACKAGES); fi; }

node: install controlplane node-packages
	$(BIN)/python -m tests.node.build

unit: install
	$(BIN)/pytest tests/unit tests/contract tests/reconcile $(PYTEST_ARGS)

# Parallel workers (pytest-xdist), each with its own control plane, Synapse, Flux and Chromium:
# the tests mostly wait on processes and timeouts. On 2 cores (shared, Dec 2026) the GitOps, deploy,
# control-plane and browser tests took 143 s with -n 2, 116 s with -n 3 and 116 s with -n 4;
# 3 is the fewer processes for the same time. PYTEST_ARGS="-n 0" runs in one process.
test: lint controlplane chromium node
	$(BIN)/pytest --numprocesses=3 --dist=worksteal $(PYTEST_ARGS)

demo: install controlplane
	$(BIN)/python -m tests.demo

demo-gitops: install controlplane
	$(BIN)/python -m tests.gitops.demo

# The chart templates a copy of crds/ (helm reads only files inside the chart); tests/deploy
# fails when the copy or deploy/ (the kustomize base rendered from the chart) is stale.
chart-crds:
	cp crds/invitations.matrix-invite.dev.yaml charts/matrix-invite-operator/files/crds/

deploy-manifests: install chart-crds
	$(BIN)/python -m tests.deploy.manifests

# Needs Docker, kind and kubectl on PATH; CI has no Docker, so this never runs there.
e2e-kind: install
	PYTHON=$(abspath $(BIN)/python) hack/e2e-kind.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .grimp_cache demo-state
