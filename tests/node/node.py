"""A real one-node cluster inside a namespace of the test run's own: control plane, containerd,
kubelet, kube-proxy and kube-scheduler, all processes tracked and stopped by PID.

Owns the node's configuration (NODE-FACTS in the project's reference notes says why each setting
is what it is on this machine kind) and its life:

- :class:`NodeControlPlane`: the harness's :class:`~tests.controlplane.cluster.ControlPlane`,
  started inside the namespace. The API server listens on every address there and advertises
  :data:`~tests.netns.NODE_IP`, so the ``kubernetes`` Service (through kube-proxy) leads Pods to
  it; its serving certificate (written before the first start) names that address, 127.0.0.1 and
  the Service's names. Its ports are forwarded to the host's 127.0.0.1, so tests, kubectl and helm
  use it as they use any other control plane. The ServiceAccount admission plugin is on (Pods get
  their token) and the controller-manager runs the controllers Deployments and Services need.
- :class:`Node`: containerd (runc, bridge CNI, the built pause image as sandbox), the kubelet
  (cgroupfs, no QoS cgroups), kube-proxy (iptables, masquerading all Service traffic: the bridge
  does not pass through iptables here) and kube-scheduler. :meth:`Node.load_image` imports a
  ``podman save`` archive into containerd for ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.controlplane.build import Binaries, cache_root
from tests.controlplane.cluster import ControlPlane, ControlPlaneError, _Process
from tests.node.build import NodeBinaries, ensure_node_binaries
from tests.node.image import podman
from tests.node.netns import (
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    POD_SUBNET,
    NetworkNamespace,
    PortForward,
    unix_socket_ready,
)

NODE_NAME = "node-1"
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
NODE_READY_TIMEOUT = 90.0
# What ctr says when a task is already gone ("no running task found: task ... not found").
TASK_NOT_FOUND = "not found"
# What Deployments, ReplicaSets, Services and Pods need besides the harness's garbage collector,
# namespaces and ServiceAccounts; root-ca-cert-publisher gives Pods the API server's CA, and
# nodelifecycle lifts the not-ready taint the kubelet registers the node with.
NODE_CONTROLLERS = (
    "garbagecollector,namespace,serviceaccount,serviceaccount-token,deployment,replicaset,"
    "endpoint,endpointslice,root-ca-cert-publisher,podgc,nodelifecycle"
)
SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
)


class NodeControlPlane(ControlPlane):
    """The control plane inside ``namespace``, its ports forwarded to the host's 127.0.0.1."""

    def __init__(
        self,
        namespace: NetworkNamespace,
        identities: Mapping[str, Sequence[str]] | None = None,
        *,
        binaries: Binaries | None = None,
    ) -> None:
        super().__init__(identities, binaries=binaries)
        self.namespace = namespace
        self._forwards: list[PortForward] = []

    def _write_static_files(self) -> None:
        super()._write_static_files()
        certs = self.workdir / "apiserver-certs"
        if not (certs / "apiserver.crt").exists():
            crt, key = _serving_certificate()
            (certs / "apiserver.key").write_bytes(key)
            (certs / "apiserver.key").chmod(0o600)
            (certs / "apiserver.crt").write_bytes(crt)

    def _define_processes(self, binaries: Binaries) -> dict[str, _Process]:
        processes = super()._define_processes(binaries)
        apiserver = processes["kube-apiserver"].args
        replaced = {
            "--bind-address=": "--bind-address=0.0.0.0",
            "--advertise-address=": f"--advertise-address={NODE_IP}",
        }
        dropped = ("--endpoint-reconciler-type=", "--disable-admission-plugins=")
        processes["kube-apiserver"].args = [
            next((new for prefix, new in replaced.items() if arg.startswith(prefix)), arg)
            for arg in apiserver
            if not arg.startswith(dropped)
        ] + ["--kubelet-preferred-address-types=InternalIP"]
        processes["kube-controller-manager"].args = [
            f"--controllers={NODE_CONTROLLERS}" if arg.startswith("--controllers=") else arg
            for arg in processes["kube-controller-manager"].args
        ]
        for process in processes.values():
            process.args = self.namespace.command(process.args)
        self._close_forwards()
        self._forwards = [
            PortForward(self.namespace, port)
            for port in (self._etcd_port, self._apiserver_port, self._kcm_port)
        ]
        return processes

    def stop(self) -> None:
        super().stop()
        self._close_forwards()

    def _close_forwards(self) -> None:
        for forward in self._forwards:
            forward.close()
        self._forwards = []


def _serving_certificate() -> tuple[bytes, bytes]:
    """A CA and a serving certificate for every name a client inside or outside uses."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-test-apiserver-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    addresses = ("127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVICE_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    return chain, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _containerd_config(workdir: Path, sandbox_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{workdir}/root"
state = "{workdir}/state"

[grpc]
  address = "{workdir}/containerd.sock"

[ttrpc]
  address = "{workdir}/containerd.sock.ttrpc"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # Without it every sandbox fails: containerd gives the pause process oom_score_adj -998,
  # which this machine refuses.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"

[{cri}.containerd]
  default_runtime_name = "runc"
  snapshotter = "overlayfs"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  base_runtime_spec = "{workdir}/base-spec.json"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{workdir}/cni"
"""


def _cni_config(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                # A Pod reaching itself through its own Service.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(workdir / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(workdir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        # The sandbox's cgroup tree is not unified: QoS cgroups cannot be made.
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{workdir}/containerd.sock",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": str(workdir / "pod-logs"),
        # How soon an edited Secret reaches a mounted volume (the default is a minute).
        "syncFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "serializeImagePulls": False,
    }


def _kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": POD_SUBNET,
        # Pods on one bridge: without br_netfilter a reply would bypass the DNAT's undo, so
        # every Service connection is masqueraded to the bridge's address.
        "iptables": {"masqueradeAll": True},
        # 0: leave the kernel's conntrack settings alone (not writable in a network namespace).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "nodePortAddresses": [f"{NODE_IP}/32"],
    }


def _pause_archive(binaries: NodeBinaries) -> tuple[Path, str]:
    """A ``podman save`` archive of an image holding only the built pause binary."""
    key = binaries.bin_dir.parent.name
    name = f"localhost/node-pause:{key}"
    archive = cache_root() / "images" / f"pause-{key}.tar"
    if archive.exists():
        return archive, name
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pause-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            tar.add(binaries.pause, arcname="pause")
        podman("import", "--change", 'ENTRYPOINT ["/pause"]', str(rootfs), name)
        partial = Path(tmp) / "pause.tar"
        podman("save", "-o", str(partial), name)
        os.replace(partial, archive)
    return archive, name


class Node:
    """containerd, kubelet, kube-proxy and kube-scheduler for ``control_plane``, one node."""

    def __init__(
        self,
        control_plane: NodeControlPlane,
        *,
        binaries: NodeBinaries | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.cp = control_plane
        self.namespace = control_plane.namespace
        self.binaries = binaries or ensure_node_binaries()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="node-"))
        self._processes: dict[str, _Process] = {}

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._processes.items() if p.pid is not None and p.running()}

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self) -> Node:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        workdir = self.workdir
        for sub in ("cni", "ipam", "pod-logs", "kubelet", "kubelet-certs"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        pause_archive, pause_name = _pause_archive(self.binaries)
        (workdir / "containerd.toml").write_text(_containerd_config(workdir, pause_name))
        (workdir / "base-spec.json").write_text(json.dumps(self._base_spec()))
        (workdir / "cni" / "10-node.conflist").write_text(json.dumps(_cni_config(workdir)))
        (workdir / "kubelet.json").write_text(json.dumps(_kubelet_config(workdir)))
        (workdir / "kube-proxy.json").write_text(
            json.dumps(_kube_proxy_config(self.cp.kubeconfig_path))
        )
        self._launch("containerd", [CONTAINERD, "--config", str(workdir / "containerd.toml")])
        self._wait("containerd", lambda: unix_socket_ready(self.containerd_socket), 30)
        self.load_image(pause_archive)
        kubeconfig = str(self.cp.kubeconfig_path)
        self._launch(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={workdir / 'kubelet.json'}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={workdir / 'kubelet'}",
                f"--cert-dir={workdir / 'kubelet-certs'}",
                "--v=1",
            ],
        )
        self._launch(
            "kube-proxy",
            [str(self.binaries.kube_proxy), f"--config={workdir / 'kube-proxy.json'}", "--v=1"],
        )
        self._launch(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
            ],
        )
        self._wait("kubelet", self._node_ready, NODE_READY_TIMEOUT)

    def _base_spec(self) -> dict[str, Any]:
        # containerd's default spec minus rlimits: this machine refuses setrlimit from a runtime.
        result = subprocess.run(
            [CTR, "oci", "spec"], capture_output=True, text=True, check=True, timeout=30
        )
        spec: dict[str, Any] = json.loads(result.stdout)
        spec.get("process", {}).pop("rlimits", None)
        return spec

    def _launch(self, name: str, args: list[str]) -> None:
        process = _Process(name, self.namespace.command(args), self.log_path(name))
        self._processes[name] = process
        process.start()

    def _wait(self, name: str, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self._processes.values():
                if not process.running():
                    raise ControlPlaneError(
                        f"{process.name} exited while waiting for {name}; log tail:\n"
                        f"{process.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.5)
        raise ControlPlaneError(
            f"{name} not ready within {timeout:.0f}s; log tail:\n"
            f"{self._processes[name].log_tail(80)}"
        )

    def _node_ready(self) -> bool:
        node = self.cp.get(f"/api/v1/nodes/{NODE_NAME}")
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        schedulable = not node["spec"].get("taints")
        return schedulable and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions
        )

    def load_image(self, archive: Path) -> None:
        """Import a ``podman save`` archive into the node's containerd (namespace ``k8s.io``)."""
        result = self._ctr("images", "import", str(archive), timeout=300)
        if result.returncode != 0:
            raise ControlPlaneError(f"ctr images import {archive} failed: {result.stderr}")

    def _ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CTR, "--address", str(self.containerd_socket), "-n", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def _kill_tasks(self) -> None:
        """SIGKILL every container (Pods' processes outlive containerd and the kubelet)."""
        for task in self._ctr("tasks", "ls", "-q").stdout.split():
            self._ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task)
        deadline = time.monotonic() + 15
        for task in self._ctr("tasks", "ls", "-q").stdout.split():
            while time.monotonic() < deadline:
                deleted = self._ctr("tasks", "delete", task)
                # A task that exited may be deleted by its shim between `ls` and `delete`: ctr
                # then says "not found", which is done too (retrying it ran into the deadline,
                # 15 s of every node teardown).
                if deleted.returncode == 0 or TASK_NOT_FOUND in deleted.stderr:
                    break
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop every node process by PID (SIGTERM, then SIGKILL), scheduler first."""
        for name in ("kube-scheduler", "kube-proxy", "kubelet"):
            process = self._processes.pop(name, None)
            if process is not None:
                process.stop()
        containerd = self._processes.pop("containerd", None)
        if containerd is not None and containerd.running():
            self._kill_tasks()
        if containerd is not None:
            containerd.stop()
        # Pods' runc shims outlive containerd by design; they are in the namespace, whose holder
        # goes last. Kill what is left of them by PID (their sessions' parent is gone).
        for pid in _shim_pids(self.containerd_socket):
            os.kill(pid, 9)


def _shim_pids(socket_path: Path) -> list[int]:
    """PIDs of containerd-shim-runc-v2 processes started for this node's containerd."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and cmdline[0].endswith(b"containerd-shim-runc-v2")
            and (str(socket_path).encode() in b" ".join(cmdline))
        ):
            pids.append(int(entry.name))
    return pids
