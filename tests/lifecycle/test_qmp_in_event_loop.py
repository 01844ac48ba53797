"""Synchronous QMP and lifecycle calls from inside a running event loop (what Jupyter does).

``qemu.qmp``'s own sync wrapper calls ``run_until_complete`` on the current loop and
fails with "This event loop is already running" there; kvmlab's ``QmpSession`` runs
its coroutines on a private loop thread instead. Fake backend only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest

from kvmlab.channels.qmp import QmpSession, qmp_execute
from kvmlab.errors import QmpError
from kvmlab.host.process import is_alive
from kvmlab.lifecycle.hypervisor import Hypervisor, InstanceState
from kvmlab.spec.instance import HvParams, Instance, Nic


def instance(name: str = "vm1", memory: int = 160, vcpus: int = 3) -> Instance:
    return Instance(
        name=name,
        memory=memory,
        vcpus=vcpus,
        nics=(Nic(mac="52:54:00:6b:04:01", mode="user"),),
        hvparams=HvParams(kernel_path="", vnc_bind_address=""),
    )


def in_running_loop(body: Callable[[], Any]) -> Any:
    """Run ``body`` synchronously inside a coroutine, as a notebook cell does."""

    async def main() -> Any:
        asyncio.get_running_loop()  # there is a running loop here
        return body()

    return asyncio.run(main())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_control_the_naive_sync_wrapper_fails_here(fake_lab: Hypervisor) -> None:
    """The harness reproduces the notebook's condition: qemu.qmp's own wrapper breaks."""
    from qemu.qmp.legacy import QEMUMonitorProtocol  # noqa: PLC0415

    fake_lab.start(instance())
    socket = str(fake_lab.layout.qmp_socket("vm1"))

    def body() -> None:
        naive = QEMUMonitorProtocol(socket)
        try:
            naive.connect()
        finally:
            with contextlib.suppress(RuntimeError):
                naive.close()

    with pytest.raises(RuntimeError, match="already running"):
        in_running_loop(body)
    gc.collect()  # its never-awaited coroutines warn here, not in another test


def test_qmp_session_works_inside_a_running_loop(fake_lab: Hypervisor) -> None:
    fake_lab.start(instance())
    socket = fake_lab.layout.qmp_socket("vm1")

    def body() -> tuple[Any, Any, Any]:
        with QmpSession(socket, timeout=5) as qmp:
            status = qmp.execute("query-status")
            cpus = qmp.execute("query-cpus-fast")
        name = qmp_execute(socket, "query-name")
        return status, cpus, name

    status, cpus, name = in_running_loop(body)
    assert status["status"] == "running"
    assert len(cpus) == 3
    assert name == {"name": "vm1"}


def test_info_and_stop_work_inside_a_running_loop(fake_lab: Hypervisor) -> None:
    info = fake_lab.start(instance())
    pid = info.pid

    def body() -> Any:
        live = fake_lab.info("vm1")  # queries the guest over QMP
        fake_lab.stop("vm1")  # ACPI powerdown over QMP
        return live

    live = in_running_loop(body)
    assert live.state is InstanceState.RUNNING
    assert live.memory == 160 and live.vcpus == 3  # answered by QMP, not only the argv
    assert live.extra.get("status") == "running"
    assert pid is not None and not is_alive(pid)
    assert fake_lab.info("vm1").state is InstanceState.STOPPED
    # The guest was powered off over QMP, not killed: the fake logged the powerdown.
    assert "Power down" in fake_lab.console("vm1").read()


def test_reboot_works_inside_a_running_loop(fake_lab: Hypervisor) -> None:
    first = fake_lab.start(instance())
    rebooted = in_running_loop(lambda: fake_lab.reboot("vm1"))
    assert rebooted.pid != first.pid and is_alive(rebooted.pid)
    assert in_running_loop(lambda: fake_lab.info("vm1")).extra.get("status") == "running"


def test_qmp_errors_inside_a_running_loop_are_qmp_errors(fake_lab: Hypervisor) -> None:
    fake_lab.start(instance())
    socket = fake_lab.layout.qmp_socket("vm1")

    def body() -> None:
        with QmpSession(socket, timeout=5) as qmp:
            qmp.execute("no-such-command")

    with pytest.raises(QmpError, match="no-such-command"):
        in_running_loop(body)
    # A failed command does not break the next session.
    assert in_running_loop(lambda: qmp_execute(socket, "query-status"))["status"] == "running"


def test_qmp_from_two_threads_each_in_its_own_running_loop(fake_lab: Hypervisor) -> None:
    fake_lab.start(instance("vm1", vcpus=1))
    fake_lab.start(instance("vm2", vcpus=2))
    results: dict[str, list[Any]] = {"vm1": [], "vm2": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        def body() -> None:
            barrier.wait(timeout=10)
            for _ in range(5):
                with QmpSession(fake_lab.layout.qmp_socket(name), timeout=5) as qmp:
                    results[name].append(len(qmp.execute("query-cpus-fast")))
                results[name].append(fake_lab.info(name).vcpus)

        try:
            in_running_loop(body)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("vm1", "vm2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a QMP call hung"
    assert errors == []
    assert results == {"vm1": [1] * 10, "vm2": [2] * 10}


def test_two_threads_on_one_instance(fake_lab: Hypervisor) -> None:
    """The fake serves one QMP client at a time: the second waits, neither fails."""
    fake_lab.start(instance())
    socket = fake_lab.layout.qmp_socket("vm1")
    statuses: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        def body() -> None:
            for _ in range(5):
                statuses.append(qmp_execute(socket, "query-status", timeout=10)["status"])

        try:
            in_running_loop(body)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert statuses == ["running"] * 10
