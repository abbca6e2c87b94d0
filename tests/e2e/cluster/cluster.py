"""Start and stop the cluster: certificates, containerd, the control plane, the node, DNS and
the NetworkPolicy enforcer. `Cluster.down()` undoes everything `up()` did, also after a run
that died half way (it works from the fixed paths, not from memory).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.e2e.cluster import network
from tests.e2e.cluster.manifests import coredns, kube_router_rbac
from tests.e2e.cluster.network import (
    DNS_SERVICE_IP,
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    NODE_NAME,
    POD_BRIDGE,
    POD_CIDR,
    POD_GATEWAY,
    SERVICE_CIDR,
    HostNetwork,
)
from tests.e2e.images.build import Images
from tests.e2e.images.build import cache_dir as image_cache
from tests.e2e.images.oci import manifest_digest, normalized
from tests.e2e.stack import Kubectl, Process, wait_for
from tests.pki import CertificateAuthority

DEFAULT_DIR = Path(os.environ.get("KEDA_TENANCY_CLUSTER_DIR", "/tmp/keda-tenancy-cluster"))
# containerd keeps shim sockets, IO fifos and runc state here whatever its state directory is,
# and its CRI plugin puts pod network namespaces in /var/run/netns.
CONTAINERD_RUN = Path("/run/containerd")
NETNS_DIR = Path("/var/run/netns")
API_PORT = 6443
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)


def log(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


class Timer:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, what: str) -> None:
        self.marks[what] = time.monotonic() - self.started
        log(f"{what}: {self.marks[what]:.1f}s")


class Cluster(Kubectl):
    kubectl_timeout_s = 120.0

    def __init__(self, bin_dir: Path, images: Images, workdir: Path = DEFAULT_DIR) -> None:
        self.bin = bin_dir
        self.images = images
        self.dir = workdir
        self.logs = workdir / "logs"
        self.pki = workdir / "pki"
        self.run_dir = workdir / "run"
        self.socket = self.run_dir / "containerd.sock"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.network = host_network(workdir)
        # containerd's root (content store, unpacked image snapshots) is a cache: images stay
        # imported and unpacked between runs; containers are removed at every start and stop.
        self.image_store = image_cache() / "containerd-root"
        self.processes: dict[str, Process] = {}
        self.timer = Timer()

    # -- up ------------------------------------------------------------------------------

    def up(self) -> None:
        self.down()  # whatever an earlier run left
        for d in (self.logs, self.pki, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.timer = Timer()
        self._certificates()
        self.network.up()
        self._containerd()
        self._remove_containers()
        self.timer.mark("containerd up")
        self._import_images()
        self.timer.mark("images imported")
        self._control_plane()
        self.timer.mark("kube-apiserver ready")
        self._node()
        self.timer.mark("node Ready")
        self.network.restore_kubelet_sysctls()
        self._dns()
        self.timer.mark("CoreDNS ready")
        self._kube_router()
        self.timer.mark("kube-router running")

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.logs / f"{name}.log", env).start()
        self.processes[name] = process
        # The PID goes to a file too: down() after a crash stops what this run started.
        assert process.popen is not None
        (self.run_dir / f"{name}.pid").write_text(str(process.popen.pid))
        return process

    def restart(self, name: str) -> Process:
        """Stops one of the cluster's programs (SIGTERM) and starts it again as it was started."""
        old = self.processes[name]
        self._stop(name)
        return self.start(name, old.argv, old.env)

    def _certificates(self) -> None:
        p = self.pki
        self.ca = CertificateAuthority("keda-tenancy-cluster-ca")
        self.ca.write(p, "ca")
        (p / "ca.key").write_bytes(_private_pem(self.ca.key))
        self.ca.issue(
            "kube-apiserver",
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=("127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP),
            server=True,
        ).write(p, "apiserver")
        self.ca.issue(
            f"system:node:{NODE_NAME}",
            organizations=("system:nodes",),
            dns=(NODE_NAME, "localhost"),
            ips=(NODE_IP, "127.0.0.1"),
            server=True,
        ).write(p, "kubelet-serving")
        # The apiserver's client for logs/exec on the kubelet.
        self.ca.issue(
            "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True
        ).write(p, "apiserver-kubelet-client")
        self.front_proxy_ca = CertificateAuthority("front-proxy-ca")
        self.front_proxy_ca.write(p, "front-proxy-ca")
        self.front_proxy_ca.issue("front-proxy-client", client=True).write(p, "front-proxy-client")
        sa = CertificateAuthority("service-accounts")  # only its key pair is used
        (p / "sa.key").write_bytes(_private_pem(sa.key))
        (p / "sa.pub").write_bytes(
            sa.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # Each component as its built-in RBAC identity; kube-router gets a ClusterRole below.
        for user, cn, groups in (
            ("admin", "keda-tenancy-admin", ("system:masters",)),
            ("controller-manager", "system:kube-controller-manager", ()),
            ("scheduler", "system:kube-scheduler", ()),
            ("kube-proxy", "system:kube-proxy", ()),
            ("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)),
            ("kube-router", "system:kube-router", ()),
        ):
            self.ca.issue(cn, organizations=groups, client=True).write(p, user)
            self.write_kubeconfig(user, p / f"{user}.crt", p / f"{user}.key")

    def write_kubeconfig(self, user: str, cert: Path, key: Path) -> Path:
        path = self.dir / f"{user}.kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "keda-tenancy",
                            "cluster": {
                                "server": f"https://{NODE_IP}:{API_PORT}",
                                "certificate-authority": str(self.pki / "ca.crt"),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": user,
                            "user": {"client-certificate": str(cert), "client-key": str(key)},
                        }
                    ],
                    "contexts": [
                        {
                            "name": "keda-tenancy",
                            "context": {"cluster": "keda-tenancy", "user": user},
                        }
                    ],
                    "current-context": "keda-tenancy",
                }
            )
        )
        return path

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        self.ca.issue(user, client=True, organizations=groups).write(self.pki, f"user-{user}")
        return self.write_kubeconfig(
            f"user-{user}", self.pki / f"user-{user}.crt", self.pki / f"user-{user}.key"
        )

    def _containerd(self) -> None:
        conf = self.dir / "containerd.toml"
        cni_conf = self.dir / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-keda-tenancy.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "keda-tenancy",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": POD_BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # nothing leaves the machine: no NAT to the uplink
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(self.dir / "cni-ipam"),
                                "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        conf.write_text(
            f"""version = 2
root = "{self.image_store}"
state = "{self.run_dir / "containerd"}"
[grpc]
  address = "{self.socket}"
[{cri}]
  sandbox_image = "{self.images.pause.reference}"
  disable_apparmor = true
  enable_selinux = false
  # This machine drops CAP_SYS_RESOURCE from every bounding set: runc cannot lower a
  # container's oom_score_adj below containerd's own, and every sandbox failed with
  # "can't get final child's PID from pipe: EOF" until this clamps it.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
"""
        )
        self.start("containerd", ["containerd", "--config", str(conf)])
        wait_for(lambda: self.ctr("version", check=False).returncode == 0, "containerd", 30, 0.1)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def _import_images(self) -> None:
        present = {}
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            words = line.split()
            present[words[0]] = words[2]  # REF TYPE DIGEST ...
        wanted = {normalized(image.reference) for image in self.images.all()}
        for image in self.images.all():
            if present.get(normalized(image.reference)) != manifest_digest(image.archive):
                self.ctr("images", "import", str(image.archive))
        # Earlier builds' images (another tag of the router...): the store keeps only this set.
        if stale := sorted(set(present) - wanted):
            self.ctr("images", "rm", *stale, check=False)

    def _remove_containers(self) -> None:
        """Whatever containers (and their snapshots) a run left in the persistent store."""
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            self.ctr("tasks", "rm", "-f", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", container, check=False)

    def _control_plane(self) -> None:
        p, b = self.pki, self.bin
        self.start(
            "etcd",
            [
                str(b / "etcd"),
                f"--data-dir={self.dir / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
                "--listen-metrics-urls=http://127.0.0.1:2381",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self.start(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:2379",
                f"--bind-address={NODE_IP}",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-node-port-range=30000-30100",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                # The aggregation layer, as managed clusters have it.
                f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
                "--v=1",
            ],
        )
        wait_for(
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
            "kube-apiserver ready",
            120,
        )
        common = ["--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"]
        cm = self.dir / "controller-manager.kubeconfig"
        self.start(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--use-service-account-credentials=true",  # the HPA controller as its own SA
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--horizontal-pod-autoscaler-downscale-stabilization=0s",
                "--secure-port=10257",
                *common,
            ],
        )
        sched = self.dir / "scheduler.kubeconfig"
        self.start(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--secure-port=10259",
                *common,
            ],
        )

    def _node(self) -> None:
        p = self.pki
        resolv = self.dir / "resolv.conf"
        # The node's own resolver for pods with dnsPolicy Default (CoreDNS): the cluster DNS,
        # which has no upstream, so no name is ever resolved off the machine.
        resolv.write_text(f"nameserver {DNS_SERVICE_IP}\n")
        kubelet_config = self.dir / "kubelet.json"
        kubelet_config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": False,  # 1.35 refuses this machine's cgroup v1 otherwise
                    "cgroupDriver": "cgroupfs",
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "address": NODE_IP,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "tlsCertFile": str(p / "kubelet-serving.crt"),
                    "tlsPrivateKeyFile": str(p / "kubelet-serving.key"),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(p / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "clusterDomain": "cluster.local",
                    "clusterDNS": [DNS_SERVICE_IP],
                    "resolvConf": str(resolv),
                    "podLogsDir": str(self.dir / "pod-logs"),
                    "failSwapOn": False,
                    "maxPods": 110,
                    "evictionHard": {
                        "memory.available": "200Mi",
                        "nodefs.available": "2%",
                        "imagefs.available": "2%",
                    },
                    "imageGCHighThresholdPercent": 99,
                    "imageGCLowThresholdPercent": 98,
                    "serializeImagePulls": False,
                }
            )
        )
        (self.dir / "pod-logs").mkdir(exist_ok=True)
        self.start(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={kubelet_config}",
                f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
                f"--root-dir={self.dir / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        proxy_config = self.dir / "kube-proxy.json"
        proxy_config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "hostnameOverride": NODE_NAME,
                    "clusterCIDR": POD_CIDR,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    "nodePortAddresses": [f"{NODE_IP}/32"],
                    "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy.kubeconfig")},
                    # Leave the machine's conntrack sysctls and route_localnet alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {"localhostNodePorts": False},
                }
            )
        )
        self.start(
            "kube-proxy", [str(self.bin / "kube-proxy"), f"--config={proxy_config}", "--v=1"]
        )
        wait_for(self.node_ready, "node Ready", 120, 0.2)

    def node_ready(self) -> bool:
        done = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _dns(self) -> None:
        self.apply(*coredns(self.images.coredns.reference, DNS_SERVICE_IP))
        self.kubectl("-n", "kube-system", "rollout", "status", "deploy/coredns", "--timeout=180s")

    def _kube_router(self) -> None:
        """NetworkPolicy enforcement only: kube-proxy routes Services, the CNI bridge pods."""
        self.apply(*kube_router_rbac("system:kube-router"))
        self.start(
            "kube-router",
            [
                str(self.bin / "kube-router"),
                f"--kubeconfig={self.dir / 'kube-router.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--health-port=0",
                "--metrics-port=0",
                "--v=1",
            ],
        )
        # Its first sync programs the chains every pod's traffic goes through.
        wait_for(
            lambda: "KUBE-ROUTER-FORWARD" in network.sh("iptables-save", "-t", "filter").stdout,
            "kube-router's firewall chains",
            60,
            0.5,
        )

    # -- kubectl -------------------------------------------------------------------------

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bin / "helm"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args[:3])}: {done.stderr.strip()}")
        return done

    # -- down ----------------------------------------------------------------------------

    def down(self) -> None:
        """Stop everything and put the machine back; safe to call when nothing runs."""
        started = time.monotonic()
        # No pod deletion through the API (a Deployment would only recreate them): the kubelet
        # stops, containerd's tasks are killed, and the network namespaces, the bridge and the
        # mounts go below; the CNI bridge plugin (ipMasq off) programs no rules to undo.
        for name in ("kube-router", "kube-proxy"):
            self._stop(name)
        if (self.dir / "kube-proxy.json").exists():
            subprocess.run(
                [
                    str(self.bin / "kube-proxy"),
                    "--cleanup",
                    f"--config={self.dir / 'kube-proxy.json'}",
                ],
                capture_output=True,
                check=False,
            )
        self._stop("kubelet")
        if self._pid_running("containerd"):
            self._remove_containers()
        for name in (
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
            "containerd",
        ):
            self._stop(name)
        _unmount_under(self.dir)
        _unmount_under(self.image_store)
        for ns in NETNS_DIR.glob("cni-*") if NETNS_DIR.is_dir() else ():
            subprocess.run(["ip", "netns", "delete", ns.name], check=False, capture_output=True)
        self.network.down()
        for d in (CONTAINERD_RUN, NETNS_DIR):
            if d.is_dir():
                subprocess.run(
                    ["find", str(d), "-depth", "-type", "d", "-empty", "-delete"], check=False
                )
        # Keep the logs of the last run; everything else goes.
        if self.dir.exists():
            for entry in self.dir.iterdir():
                if entry.name != "logs":
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
        self.processes.clear()
        log(f"down in {time.monotonic() - started:.1f}s")

    def _pid(self, name: str) -> int | None:
        path = self.run_dir / f"{name}.pid"
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _pid_running(self, name: str) -> bool:
        pid = self._pid(name)
        if pid is None:
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        # The PID must still be that program (not a later process that reused the number).
        return any(Path(arg.decode(errors="replace")).name == name for arg in argv[:1])

    def _stop(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None:
            process.stop(30)
        elif (pid := self._pid(name)) is not None and self._pid_running(name):
            os.kill(pid, 15)
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not self._pid_running(name), f"{name} stopped", 30, 0.2)
            if self._pid_running(name):
                os.kill(pid, 9)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)


def _private_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _unmount_under(directory: Path) -> None:
    """Volumes and rootfs mounts the kubelet and containerd left, deepest first."""
    prefix = str(directory) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        if subprocess.run(["umount", target], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def host_network(workdir: Path = DEFAULT_DIR) -> HostNetwork:
    return HostNetwork(workdir.parent / f"{workdir.name}.state")


@contextlib.contextmanager
def running_cluster(
    bin_dir: Path, images: Images, workdir: Path = DEFAULT_DIR
) -> Iterator[Cluster]:
    cluster = Cluster(bin_dir, images, workdir)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
