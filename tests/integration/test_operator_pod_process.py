"""keda-tenancy-operator-pod --mode=process against the fake API, a real child standing in for
KEDA: it runs KEDA on exactly the published namespace set, and on nothing else."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

from operator_pod.app import OperatorPod
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.switch_proxy import SwitchProxy
from tests.operator_pod_harness import (
    HOSTNAME,
    LEASE,
    NAMESPACE,
    http_get,
    kubeconfig_for,
    process_args,
    publish,
    running_pod,
)
from tests.reloader_harness import ChildLog, eventually


async def test_restarts_keda_with_each_new_set_and_never_with_an_empty_one(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    async with running_pod(
        process_args(kubeconfig, log.path), environ={"KEEP_ME": "yes", "WATCH_NAMESPACE": "x"}
    ) as pod:
        await eventually(lambda: pod.process is not None and pod.process.decision is not None)
        assert pod.process is not None
        assert not pod.child.running  # no ConfigMap: undecided, no KEDA
        publish(kube_api, None)  # the ConfigMap without data: still undecided
        await asyncio.sleep(0.3)
        assert log.starts() == []
        publish(kube_api, "a1,a2")
        await eventually(lambda: log.starts() == ["a1,a2"])
        assert log.events("start")[0]["other"] == "yes"  # the rest of the environment is kept
        publish(kube_api, "a1,a2,a3")
        await eventually(lambda: log.starts()[-1] == "a1,a2,a3")
        assert len(log.events("signal")) == 1  # the old KEDA was stopped with SIGTERM first
        publish(kube_api, "")  # decided empty: KEDA stopped, never started with ""
        await eventually(lambda: not pod.child.running)
        assert pod.process.readiness() == "the namespace set is empty: KEDA is kept stopped"
        publish(kube_api, "b1")
        await eventually(lambda: log.starts()[-1] == "b1")
        kube_api.delete_configmap(NAMESPACE, "keda-operator-namespaces")  # undecided again
        await eventually(lambda: not pod.child.running)
        await asyncio.sleep(0.3)
    assert log.starts() == ["a1,a2", "a1,a2,a3", "b1"]
    assert all(e["has_env"] for e in log.events("start"))


def exposed(pod: OperatorPod, name: str) -> float:
    """A series' value as /metrics shows it."""
    text = pod.registry.expose().decode()
    (line,) = (line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_the_empty_set_gauge_tells_decided_empty_from_never_published(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """KedaTenancyNoOperatorLeader is silenced only by a set decided empty: a set the controller
    never published (KEDA stopped too, `namespaces` 0 too) must still alert."""
    empty = "keda_tenancy_operator_pod_namespace_set_empty"
    log = ChildLog(tmp_path / "child.log")
    async with running_pod(process_args(kubeconfig, log.path)) as pod:
        await eventually(lambda: pod.process is not None and pod.process.decision is not None)
        publish(kube_api, None)  # undecided
        await asyncio.sleep(0.3)
        assert exposed(pod, empty) == 0
        assert exposed(pod, "keda_tenancy_operator_pod_namespaces") == 0
        publish(kube_api, "")
        await eventually(lambda: exposed(pod, empty) == 1)
        publish(kube_api, "a1")
        await eventually(lambda: exposed(pod, empty) == 0)
        publish(kube_api, "")
        await eventually(lambda: exposed(pod, empty) == 1)
        kube_api.delete_configmap(NAMESPACE, "keda-operator-namespaces")  # undecided again
        await eventually(lambda: exposed(pod, empty) == 0)


async def test_a_burst_of_changes_is_one_restart(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    async with running_pod(process_args(kubeconfig, log.path, "--debounce=300ms")):
        await eventually(lambda: log.starts() == ["a1"])
        for value in ("a1,a2", "a1,a2,a3", "a2,a3"):
            publish(kube_api, value)
            await asyncio.sleep(0.05)
        await eventually(lambda: len(log.starts()) == 2)
        await asyncio.sleep(0.5)
    assert log.starts() == ["a1", "a2,a3"]


async def test_a_value_that_is_not_namespace_names_is_refused_and_keda_keeps_the_last(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    async with running_pod(process_args(kubeconfig, log.path)) as pod:
        await eventually(lambda: log.starts() == ["a1"])
        publish(kube_api, "a1,,a2")  # an empty item would be the cluster scope to KEDA
        assert pod.probes is not None
        await eventually(lambda: pod.process is not None and pod.process.refused is not None)
        assert pod.probes.port is not None
        status, body = await http_get(pod.probes.port, "/readyz")
        assert status == 200
        assert "the namespace set was refused" in body
        publish(kube_api, "a2")
        await eventually(lambda: log.starts()[-1] == "a2")
    assert log.starts() == ["a1", "a2"]


async def test_relists_after_410_gone_and_sees_what_changed_meanwhile(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    async with running_pod(process_args(kubeconfig, log.path)):
        await eventually(lambda: log.starts() == ["a1"])
        lists = kube_api.requests["list configmaps"]
        kube_api.silence_watches()  # the change is missed by the open watch ...
        publish(kube_api, "a1,a2")
        kube_api.compact()  # ... and compacted away: a watch from the old version gets 410
        kube_api.drop_watches()
        kube_api.silence_watches(False)
        await eventually(lambda: log.starts()[-1:] == ["a1,a2"])
        assert kube_api.requests["list configmaps"] > lists


async def test_keda_keeps_running_while_the_api_server_hangs_or_is_gone(
    kube_api: FakeKubeAPI, tmp_path: Path
) -> None:
    """The last set stays in force; /readyz stays ready (the adapter reaches KEDA through this
    pod's Service) and warns; once the API server is back, the next change applies."""
    proxy = SwitchProxy(kube_api.port)
    await proxy.start()
    kubeconfig = kubeconfig_for(proxy.url, tmp_path / "kubeconfig")
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    try:
        async with running_pod(process_args(kubeconfig, log.path)) as pod:
            await eventually(lambda: log.starts() == ["a1"])
            assert pod.follower is not None
            assert pod.probes is not None
            assert pod.probes.port is not None
            proxy.switch("hang")  # open watch frozen, new requests never answered
            await eventually(lambda: pod.follower is not None and pod.follower.error, 10)
            status, body = await http_get(pod.probes.port, "/readyz")
            assert status == 200
            assert "cannot follow the namespace set, KEDA keeps the last one" in body
            proxy.switch("refuse")
            await asyncio.sleep(0.5)
            assert pod.child.running
            assert log.starts() == ["a1"]
            publish(kube_api, "a1,a2")
            proxy.switch("pass")
            await eventually(lambda: log.starts()[-1] == "a1,a2", 10)
            await eventually(lambda: pod.follower is not None and pod.follower.error is None)
            status, body = await http_get(pod.probes.port, "/readyz")
            assert (status, body) == (200, "ok\n")
    finally:
        await proxy.stop()


def lease_spec(holder: str, renewed: str = "2026-01-01T00:00:00.000000Z") -> dict[str, object]:
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": 15,
        "acquireTime": renewed,
        "renewTime": renewed,
    }


async def test_releases_the_lease_after_each_exit_only_when_this_pods_keda_holds_it(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    kube_api.put_lease(NAMESPACE, LEASE, lease_spec(f"{HOSTNAME}_old-run"))
    async with running_pod(
        process_args(kubeconfig, log.path, f"--release-lease={NAMESPACE}/{LEASE}")
    ) as pod:
        await eventually(lambda: log.starts() == ["a1"])
        # The KEDA of an earlier run of this container held it: released before the start.
        assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == ""
        kube_api.put_lease(NAMESPACE, LEASE, lease_spec(f"{HOSTNAME}_1234"))  # our KEDA leads
        publish(kube_api, "a1,a2")
        await eventually(lambda: log.starts()[-1] == "a1,a2")
        assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == ""
        assert pod.metrics.lease_releases.value == 2
        kube_api.put_lease(NAMESPACE, LEASE, lease_spec("keda-operator-other-pod_99"))
        publish(kube_api, "a2")
        await eventually(lambda: log.starts()[-1] == "a2")
        # Another pod's KEDA leads: never ours to release.
        held = kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"]
        assert held == "keda-operator-other-pod_99"
        assert pod.metrics.lease_releases.value == 2


async def test_the_grpc_port_stays_bound_and_reaches_each_new_keda(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """The adapter's connection is accepted while KEDA restarts (and while none runs) and is
    spliced to KEDA's port once the next KEDA listens."""

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    keda_port = free_port()
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    args = process_args(
        kubeconfig,
        log.path,
        f"--forward-grpc=127.0.0.1:{free_port()}=127.0.0.1:{keda_port}",
        child=[f"--health-probe-bind-address=127.0.0.1:{keda_port}"],
    )
    async with running_pod(args) as pod:
        assert pod.forwarder is not None
        await eventually(lambda: log.starts() == ["a1"] and pod.forwarder.port is not None)
        port = pod.forwarder.port
        assert port is not None
        assert await http_get(port, "/healthz") == (200, "ok")
        publish(kube_api, "")  # KEDA stopped: the port is still ours
        await eventually(lambda: not pod.child.running)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # accepted, held
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        await writer.drain()
        publish(kube_api, "a2")  # the next KEDA listens: the held connection reaches it
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.0 200")
        assert pod.forwarder.port == port


async def test_a_keda_that_exits_on_its_own_is_restarted_until_it_is_given_up_on(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    args = process_args(
        kubeconfig,
        log.path,
        "--backoff-initial=50ms",
        "--max-restarts=2",
        child=["--exit-code=3"],
    )
    async with running_pod(args) as pod:
        await asyncio.wait_for(pod.task, 10)  # type: ignore[attr-defined]
        assert pod.task.result() == 1  # type: ignore[attr-defined]
        assert pod.process is not None
        assert pod.process.readiness() == "KEDA exited 3 times in a row; giving up"
    assert log.starts() == ["a1", "a1", "a1"]
    assert pod.metrics.operator_exits.labels("3").value == 3


async def test_livez_fails_while_keda_runs_but_its_own_healthz_does_not_answer(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """Past its start grace, a KEDA that is alive but silent (SIGSTOP) fails /livez (the
    kubelet restarts the container); while KEDA is stopped on purpose nothing is asked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        keda_probes = int(s.getsockname()[1])
    log = ChildLog(tmp_path / "child.log")
    publish(kube_api, "a1")
    args = process_args(
        kubeconfig,
        log.path,
        "--check-operator-health=true",
        "--operator-start-grace=0s",
        "--operator-probe-timeout=300ms",
        child=[f"--health-probe-bind-address=127.0.0.1:{keda_probes}"],
    )
    async with running_pod(args) as pod:
        await eventually(lambda: log.starts() == ["a1"] and pod.probes is not None)
        assert pod.probes is not None
        port = pod.probes.port
        assert port is not None
        await eventually(lambda: pod.child.pid is not None)
        assert await http_get(port, "/livez") == (200, "ok\n")
        pid = pod.child.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            status, body = await http_get(port, "/livez")
            assert status == 503
            assert "KEDA's /healthz did not answer" in body
        finally:
            os.kill(pid, signal.SIGCONT)
        publish(kube_api, "")  # KEDA stopped on purpose: alive
        await eventually(lambda: not pod.child.running)
        assert await http_get(port, "/livez") == (200, "ok\n")
