"""Start real QEMU paused on a golden case's command line, then quit it over QMP.

The golden files pin what kvmlab *writes*; this module checks that QEMU *accepts* it.
A case is made runnable without changing what it asks for:

- the state directory is a short temp directory (``/tmp/ka-XXXX``: unix socket paths
  must stay under 107 bytes);
- disk, CD-ROM and floppy paths become small image files in it, kernel and initrd
  paths the test guest's, ``mem_path``, a VNC socket directory and the x509
  directory temp directories (x509 certificates made with ``openssl``), and the VNC
  port a free one;
- the accelerator is TCG (``kvm_flag`` is cleared so the forced ``accel=tcg`` applies):
  this host's KVM cannot run guests;
- ``-daemonize`` is removed and ``-S`` added: QEMU then runs in the foreground as our
  child, paused before the guest's first instruction, so it is always reaped, and
  option errors still surface (QEMU parses and builds every device before ``-S``
  takes effect);
- NICs get user plans, or (as root) script plans whose script is ``exit 0``, so
  QEMU creates real taps without touching any bridge.

What this host cannot do is skipped with a reason (:class:`AcceptanceSkipError`): tap
NICs, ``-chroot`` and ``-runas`` without root, ``vhost=on`` without ``/dev/vhost-net``.

Imported by name (tests have no packages); the basename is unique in the repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmlab.channels.qmp import QmpSession
from kvmlab.errors import QmpError
from kvmlab.guest.build import GuestImage
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.plan import NicPlan, NicPlanKind, StartFacts, plan_execution
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import Disk, Instance, KvmFlag, NicMode
from kvmlab.spec.layout import StateLayout

START_TIMEOUT = 20.0
QUIT_TIMEOUT = 10.0
TRIVIAL_SCRIPT = "#!/bin/sh\nexit 0\n"
IMAGE_BYTES = 1024 * 1024
FLOPPY_BYTES = 1474560


class AcceptanceSkipError(Exception):
    """This case cannot be started on this host (no root for taps, no /dev/vhost-net...)."""


@dataclass(frozen=True)
class QemuRun:
    """What a paused start produced.

    :ivar accepted: QEMU reached the QMP handshake (it accepted the command line).
    :ivar status: ``query-status``'s ``status`` (``prelaunch`` under ``-S``).
    :ivar output: QEMU's stdout and stderr (its error message when refused).
    """

    argv: tuple[str, ...]
    accepted: bool
    status: str
    exitcode: int | None
    output: str

    @property
    def error(self) -> str:
        """QEMU's own message: the last non-empty line of what it printed."""
        lines = [line for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {self.exitcode}, no output"


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A short temp directory, removed afterwards whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="ka-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _image(path: Path, size: int) -> str:
    with path.open("wb") as handle:
        handle.truncate(size)
    return str(path)


def _vnc_ports() -> range:
    """The VNC ports this test process may try: 5910-5999, or under pytest-xdist ten
    of them per worker (gw0: 5910-5919, gw1: 5920-5929, ...), so that two workers never
    pick the same free port in the moment between the check and QEMU's bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.removeprefix("gw").isdigit():
        return range(5910, 6000)
    first = 5910 + 10 * (int(worker.removeprefix("gw")) % 9)
    return range(first, first + 10)


def _free_vnc_port(address: str) -> int:
    """A TCP port above 5900 nothing listens on now (5901 may be someone's desktop)."""
    ports = _vnc_ports()
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    raise AcceptanceSkipError(f"no free VNC port between {ports[0]} and {ports[-1]}")


def _x509_dir(root: Path) -> str:
    """A self-signed CA and server certificate, as QEMU's tls-creds-x509 wants them."""
    if shutil.which("openssl") is None:
        raise AcceptanceSkipError("the x509 case needs openssl to make certificates")
    folder = root / "x509"
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-subj", "/CN=kvmlab-test-ca", "-keyout", "ca-key.pem", "-out", "ca-cert.pem"),
    )
    openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"),
        *("-keyout", "server-key.pem", "-out", "server.csr"),
    )
    openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem"),
        *("-CAcreateserial", "-days", "2", "-out", "server-cert.pem"),
    )
    return str(folder)


def map_instance(instance: Instance, root: Path, guest: GuestImage) -> Instance:
    """The same instance, with every host path and port replaced by one that works here."""
    hv = instance.hvparams
    disks = tuple(
        Disk(path=_image(root / f"disk{index}.img", IMAGE_BYTES), mode=disk.mode)
        for index, disk in enumerate(instance.disks)
    )
    update: dict[str, object] = {}
    if hv.kernel_path:
        update["kernel_path"] = str(guest.kernel)
    if hv.initrd_path:
        update["initrd_path"] = str(guest.initrd)
    for key in ("cdrom_image_path", "cdrom2_image_path"):
        if getattr(hv, key):
            update[key] = _image(root / f"{key}.iso", IMAGE_BYTES)
    if hv.floppy_image_path:
        update["floppy_image_path"] = _image(root / "floppy.img", FLOPPY_BYTES)
    if hv.mem_path:
        (root / "mem").mkdir()
        update["mem_path"] = str(root / "mem")
    if hv.vnc_bind_address.startswith("/"):
        (root / "vnc").mkdir()
        update["vnc_bind_address"] = str(root / "vnc")
    if hv.vnc_x509_path:
        update["vnc_x509_path"] = _x509_dir(root)
    if hv.vnc_password_file:
        password = root / "vnc-password"
        password.write_text("secret\n", encoding="utf-8")
        update["vnc_password_file"] = str(password)
    if hv.kvm_flag is not KvmFlag.DEFAULT:
        update["kvm_flag"] = KvmFlag.DEFAULT
    port = instance.network_port
    if port is not None and hv.vnc_bind_address and not hv.vnc_bind_address.startswith("/"):
        port = _free_vnc_port(hv.vnc_bind_address)
    return instance.model_copy(
        update={
            "disks": disks,
            "hvparams": hv.model_copy(update=update),
            "network_port": port,
        }
    )


def _nic_plans(instance: Instance, root: Path) -> tuple[NicPlan, ...]:
    plans = []
    for seq, nic in enumerate(instance.nics):
        if nic.mode is NicMode.USER:
            plans.append(NicPlan(NicPlanKind.USER))
            continue
        if os.geteuid() != 0:
            raise AcceptanceSkipError(f"NIC {seq} is {nic.mode}: QEMU needs root to create its tap")
        if instance.hvparams.vhost_net and not Path("/dev/vhost-net").exists():
            raise AcceptanceSkipError(
                "vhost_net on a tap NIC needs /dev/vhost-net (modprobe vhost_net)"
            )
        script = root / f"up-{seq}"
        script.write_text(TRIVIAL_SCRIPT, encoding="utf-8")
        script.chmod(0o700)
        plans.append(NicPlan(NicPlanKind.SCRIPT, script_path=str(script)))
    return tuple(plans)


def acceptance_argv(
    instance: Instance, caps: QemuCapabilities, binary: str, root: Path, guest: GuestImage
) -> tuple[tuple[str, ...], str]:
    """The command to run and its QMP socket, for ``instance`` mapped into ``root``.

    :raise InvalidInputError: kvmlab refuses the case for these capabilities.
    :raise AcceptanceSkipError: the case cannot run on this host.
    """
    hv = instance.hvparams
    if os.geteuid() != 0 and (hv.use_chroot or hv.security_model == "user"):
        raise AcceptanceSkipError("-chroot and -runas (or -run-with) need root")
    mapped = map_instance(instance, root, guest)
    layout = StateLayout(root / "state")
    for directory in layout.directories():
        directory.mkdir(mode=0o700, exist_ok=True)
    layout.chroot_dir(mapped.name).mkdir(parents=True)
    layout.nic_dir(mapped.name).mkdir()
    runtime = generate_runtime(mapped, caps, layout=layout, accel="tcg", binary=binary)
    qmp = str(layout.qmp_socket(mapped.name))
    facts = StartFacts(
        nic_plans=_nic_plans(mapped, root),
        qmp_socket=qmp,
        nic_dir=str(layout.nic_dir(mapped.name)),
        caps=caps,
    )
    plan = plan_execution(runtime, facts)
    saved = tuple(word for word in runtime.argv if word != "-daemonize")
    return (*saved, *plan.start_args, "-S"), qmp


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Make sure the process is gone and reaped; its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=QUIT_TIMEOUT)


def _connect(
    process: subprocess.Popen[bytes], qmp_socket: str, deadline: float
) -> QmpSession | None:
    """A QMP session once QEMU listens; ``None`` when it exited first (it refused).

    QEMU creates the QMP socket while parsing options, before building the machine,
    so the file can exist before anything accepts on it, and a later error closes
    it again: retry until QEMU answers or exits.
    """
    while process.poll() is None and time.monotonic() < deadline:
        if os.path.exists(qmp_socket):
            session = QmpSession(qmp_socket, timeout=START_TIMEOUT)
            try:
                session.connect()
            except QmpError:
                pass
            else:
                return session
        time.sleep(0.01)
    return None


def run_paused(argv: tuple[str, ...], qmp_socket: str, log_path: Path) -> QemuRun:
    """Start ``argv`` (which holds ``-S``), shake hands over QMP, ``quit``; always reaped.

    :return: accepted when QMP answered; otherwise QEMU's output says why it refused.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    status = ""
    accepted = False
    try:
        session = _connect(process, qmp_socket, time.monotonic() + START_TIMEOUT)
        if session is not None:
            try:
                status = str(session.execute("query-status").get("status", ""))
                accepted = True
                with contextlib.suppress(QmpError):
                    session.execute("quit")
            finally:
                session.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=QUIT_TIMEOUT)
    finally:
        exitcode = _stop(process)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    return QemuRun(argv, accepted, status, exitcode, output)
