"""Tests of the test-guest builder (:mod:`kvmlab.guest.build` and the modules beside it).

Most tests are hermetic: they build synthetic ``.deb`` files (an ``ar`` archive around a
``data.tar.xz``) with fake kernels, fake modules (tiny ELF files carrying a ``.modinfo``
section) and a fake static busybox, so they need no network, no apt and no QEMU. The last
test builds the real guest and boots it under QEMU with TCG; it is skipped when QEMU is
missing, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import lzma
import os
import re
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.errors import KvmlabError
from kvmlab.guest import build as guest
from kvmlab.guest import init as guest_init
from kvmlab.guest import sources
from kvmlab.guest.archives import read_ar
from kvmlab.guest.build import GuestBuildError, GuestImage, build_guest, default_cache_dir
from kvmlab.guest.cpio import CpioEntry, read_newc, write_newc
from kvmlab.guest.elf import bzimage_version, has_pvh_entry, is_static_x86_64
from kvmlab.guest.init import render_init_script
from kvmlab.guest.modules import module_deps

# --------------------------------------------------------------------------- helpers


def make_ar(members: dict[str, bytes]) -> bytes:
    """An ``ar`` archive the way dpkg-deb writes one (GNU names with a trailing ``/``)."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        assert len(header) == 60
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(files: dict[str, bytes]) -> bytes:
    return make_ar(
        {
            "debian-binary": b"2.0\n",
            "control.tar.xz": make_tar_xz({"./control": b"Package: test\n"}),
            "data.tar.xz": make_tar_xz(files),
        }
    )


def make_elf(*, interp: bool = False, sections: dict[str, bytes] | None = None) -> bytes:
    """A minimal ELF64 x86-64 file: one program header, optional named sections."""
    sections = dict(sections or {})
    ehdr_size, phdr_size, shdr_size = 64, 56, 64
    phdr = struct.pack("<IIQQQQQQ", 3 if interp else 1, 5, 0, 0, 0, 0, 0, 0x1000)
    body = bytearray()
    names = bytearray(b"\0")
    table: list[tuple[int, int, int]] = []  # (name offset, data offset, size)
    data_start = ehdr_size + phdr_size
    for name, data in [*sections.items(), (".shstrtab", b"")]:
        name_off = len(names)
        names += name.encode() + b"\0"
        payload = bytes(names) if name == ".shstrtab" else data
        table.append((name_off, data_start + len(body), len(payload)))
        body += payload
    shoff = data_start + len(body)
    header = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 9)
    header += struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        62,  # EM_X86_64
        1,
        0x401000,
        ehdr_size,
        shoff,
        0,
        ehdr_size,
        phdr_size,
        1,
        shdr_size,
        len(table) + 1,
        len(table),  # the section-name table is the last one
    )
    shdrs = bytes(shdr_size)  # SHN_UNDEF
    for name_off, offset, size in table:
        shdrs += struct.pack("<IIQQQQIIQQ", name_off, 1, 0, 0, offset, size, 0, 0, 1, 0)
    return bytes(header) + phdr + bytes(body) + shdrs


def make_module(name: str, depends: str) -> bytes:
    modinfo = f"license=GPL\0depends={depends}\0name={name}\0".encode()
    return make_elf(sections={".text": b"\x90" * 7, ".modinfo": modinfo})


def make_bzimage(release: str) -> bytes:
    """Enough of a bzImage for the setup-header version string to be found."""
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x300 - 0x200)
    text = f"{release} (builder@test) #1 SMP".encode() + b"\0"
    image[0x300 : 0x300 + len(text)] = text
    return bytes(image) + b"kernel payload " + release.encode()


RELEASE = "9.9.9-test-cloud-amd64"
MODDIR = f"./lib/modules/{RELEASE}/kernel"


def fake_kernel_deb(extra: dict[str, bytes] | None = None) -> bytes:
    """A kernel package whose virtio modules depend on each other as in Debian 12."""
    files = {
        f"./boot/vmlinuz-{RELEASE}": make_bzimage(RELEASE),
        f"./boot/config-{RELEASE}": b"CONFIG_VIRTIO=m\n",
        f"{MODDIR}/drivers/virtio/virtio_pci.ko": make_module(
            "virtio_pci", "virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio,virtio_ring"
        ),
        f"{MODDIR}/drivers/virtio/virtio_pci_modern_dev.ko": make_module(
            "virtio_pci_modern_dev", ""
        ),
        f"{MODDIR}/drivers/virtio/virtio_pci_legacy_dev.ko": make_module(
            "virtio_pci_legacy_dev", ""
        ),
        f"{MODDIR}/drivers/virtio/virtio_ring.ko": make_module("virtio_ring", ""),
        f"{MODDIR}/drivers/virtio/virtio.ko": make_module("virtio", "virtio_ring"),
        f"{MODDIR}/drivers/net/virtio_net.ko": make_module(
            "virtio_net", "net_failover,virtio,virtio_ring"
        ),
        f"{MODDIR}/drivers/net/net_failover.ko": make_module("net_failover", "failover"),
        f"{MODDIR}/net/core/failover.ko": make_module("failover", ""),
        f"{MODDIR}/drivers/acpi/button.ko": make_module("button", ""),
        f"{MODDIR}/drivers/unused/e1000.ko": make_module("e1000", ""),
        # evdev is compressed as on newer Debian kernels; virtio_blk is built in.
        f"{MODDIR}/drivers/input/evdev.ko.xz": lzma.compress(make_module("evdev", "")),
        f"./lib/modules/{RELEASE}/modules.builtin": b"kernel/drivers/block/virtio_blk.ko\n",
    }
    files.update(extra or {})
    return make_deb(files)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache directory already holding a (fake) busybox-static package, so that nothing
    looks at the host's busybox or runs apt."""
    cache_dir = tmp_path / "cache"
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True)
    busybox = make_elf(sections={".text": b"fake busybox"})
    (downloads / "busybox-static_1.35.0-4_amd64.deb").write_bytes(
        make_deb({"./bin/busybox": busybox})
    )
    return cache_dir


def initrd_files(image: GuestImage) -> dict[str, CpioEntry]:
    return {e.name: e for e in read_newc(gzip.decompress(image.initrd.read_bytes()))}


# --------------------------------------------------------------------------- cpio


def test_newc_round_trip() -> None:
    entries = [
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("bin", stat.S_IFDIR | 0o755),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        CpioEntry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
        CpioEntry("odd", stat.S_IFREG | 0o644, b"x" * 5, uid=1, gid=2, mtime=3),
        CpioEntry("empty", stat.S_IFREG | 0o644),
        CpioEntry("a-name-of-odd-length", stat.S_IFREG | 0o600, bytes(range(256)) * 3),
    ]
    archive = write_newc(entries)
    assert archive.startswith(b"070701")
    assert len(archive) % 4 == 0
    assert b"TRAILER!!!\0" in archive
    assert read_newc(archive) == entries
    assert write_newc(entries) == archive  # deterministic


def test_newc_header_fields() -> None:
    archive = write_newc([CpioEntry("f", stat.S_IFREG | 0o644, b"abc")])
    fields = [int(archive[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[0] == 1  # inode
    assert fields[1] == stat.S_IFREG | 0o644
    assert fields[4] == 1  # nlink
    assert fields[6] == 3  # filesize
    assert fields[11] == 2  # namesize, with the NUL
    assert archive[110:112] == b"f\0"
    assert archive[112:115] == b"abc"  # 110 + 2 is already 4-aligned


def test_newc_rejects_garbage() -> None:
    with pytest.raises(GuestBuildError, match="header"):
        read_newc(b"070707" + b"0" * 200)


# --------------------------------------------------------------------------- ar / deb


def test_ar_parser_on_synthetic_deb() -> None:
    deb = make_deb({"./usr/share/doc/x": b"odd length!"})
    members = read_ar(deb)
    assert list(members) == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    assert members["debian-binary"] == b"2.0\n"
    with tarfile.open(fileobj=io.BytesIO(members["data.tar.xz"]), mode="r:xz") as tar:
        member = tar.extractfile("./usr/share/doc/x")
        assert member is not None
        assert member.read() == b"odd length!"


def test_ar_parser_errors() -> None:
    with pytest.raises(GuestBuildError, match="not an ar archive"):
        read_ar(b"PK\x03\x04")
    deb = make_ar({"debian-binary": b"2.0\n"})
    with pytest.raises(GuestBuildError, match="truncated"):
        read_ar(deb[:-3])


def test_zstd_data_member_is_reported_not_crashed(cache: Path, tmp_path: Path) -> None:
    deb = make_ar({"debian-binary": b"2.0\n", "data.tar.zst": b"\x28\xb5\x2f\xfd junk"})
    path = tmp_path / "linux-image-zst.deb"
    path.write_bytes(deb)
    with pytest.raises(GuestBuildError, match="zstd"):
        build_guest(cache, path)


# --------------------------------------------------------------------------- ELF bits


def test_static_elf_detection() -> None:
    assert is_static_x86_64(make_elf())
    assert not is_static_x86_64(make_elf(interp=True))
    assert not is_static_x86_64(b"#!/bin/sh\n")


def test_modinfo_and_bzimage_version() -> None:
    module = make_module("virtio_net", "net_failover,virtio")
    assert module_deps(module) == ("net_failover", "virtio")
    assert bzimage_version(make_bzimage("6.1.0-56-cloud-amd64")) == "6.1.0-56-cloud-amd64"
    assert bzimage_version(b"not a kernel" * 100) is None


# --------------------------------------------------------------------------- /init


def test_init_script_speaks_the_facts_protocol() -> None:
    text = render_init_script(["virtio", "virtio_ring", "virtio_net"])
    assert text.startswith("#!/bin/busybox sh\n")
    # The facts are gathered in one variable and printed with one write.
    assert re.search(r'^facts="KVMLAB-BOOT-OK$', text, re.M)
    assert re.search(r"^MEM \$\(.*MemTotal.*/proc/meminfo\)$", text, re.M)
    assert re.search(r"^CPUS \$\(nproc\)", text, re.M)
    assert re.search(r"^NIC eth\$n \$\(cat /sys/class/net/eth\$n/address\)\"$", text, re.M)
    assert re.search(r"^printf '%s\\nKVMLAB-FACTS-END\\n' \"\$facts\" > \$out$", text, re.M)
    assert "for m in virtio virtio_ring virtio_net; do" in text
    assert "mount -t devtmpfs" in text
    assert "ip link set lo up" in text
    # The power button handler is started before the facts are printed.
    assert text.index("acpid") < text.index("KVMLAB-BOOT-OK")
    assert "setsid cttyhack sh" in text


def test_init_script_rejects_odd_module_names() -> None:
    with pytest.raises(GuestBuildError):
        render_init_script(["virtio; reboot -f"])


# --------------------------------------------------------------------------- building


def test_build_from_synthetic_kernel_deb(cache: Path, tmp_path: Path) -> None:
    deb = tmp_path / "linux-image-9.9.9-test-cloud-amd64_9.9.9-1_amd64.deb"
    deb.write_bytes(fake_kernel_deb())
    messages: list[str] = []
    image = build_guest(cache, deb, progress=messages.append)

    assert image.kernel.read_bytes() == make_bzimage(RELEASE)
    assert image.kernel.parent == image.initrd.parent == cache.resolve()
    digest = image.kernel.name.removeprefix("vmlinuz-")
    assert image.initrd.name == f"initrd-{digest}.cpio.gz"
    assert json.loads(image.to_json()) == {"kernel": str(image.kernel), "initrd": str(image.initrd)}
    assert any(m.startswith("writing initramfs (") for m in messages)

    files = initrd_files(image)
    modules = [n.removeprefix("lib/modules/").removesuffix(".ko") for n in files if ".ko" in n]
    assert "virtio_blk" not in modules  # built in
    assert "e1000" not in modules  # not wanted
    assert set(modules) == {
        "virtio",
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
        "evdev",
        "button",
    }
    assert files["lib/modules/evdev.ko"].data == make_module("evdev", "")  # decompressed
    init = files["init"].data.decode()
    order = re.search(r"for m in (.*); do", init)
    assert order is not None
    load = order.group(1).split()
    assert set(load) == set(modules)
    for module, deps in [
        ("virtio", ["virtio_ring"]),
        ("virtio_pci", ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev"]),
        ("virtio_net", ["net_failover", "virtio"]),
        ("net_failover", ["failover"]),
    ]:
        for dep in deps:
            assert load.index(dep) < load.index(module), (dep, module)
    assert stat.S_IMODE(files["init"].mode) == 0o755
    assert files["dev/console"].rdev == (5, 1)
    assert files["bin/busybox"].data == make_elf(sections={".text": b"fake busybox"})
    assert b"poweroff -f" in files["etc/acpi/PWRF/00000080"].data
    assert not list(cache.glob("**/*.tmp")), "temporary files left behind"


def test_cache_hit_reuses_files(cache: Path, tmp_path: Path) -> None:
    deb = tmp_path / "linux-image-test.deb"
    deb.write_bytes(fake_kernel_deb())
    first = build_guest(cache, deb)
    stamps = {p: p.stat().st_mtime_ns for p in (first.kernel, first.initrd)}
    inodes = {p: p.stat().st_ino for p in (first.kernel, first.initrd)}
    messages: list[str] = []
    second = build_guest(cache, deb, progress=messages.append)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {p: p.stat().st_ino for p in inodes} == inodes
    assert any(m.startswith("reusing guest") for m in messages)
    assert not any(m.startswith(("unpacking", "writing")) for m in messages)


def test_changed_init_script_makes_a_new_image(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deb = tmp_path / "linux-image-test.deb"
    deb.write_bytes(fake_kernel_deb())
    first = build_guest(cache, deb)
    monkeypatch.setattr(guest_init, "_INIT_TEMPLATE", guest_init._INIT_TEMPLATE + "# changed\n")
    second = build_guest(cache, deb)
    assert second.initrd != first.initrd
    assert second.kernel != first.kernel
    assert first.initrd.exists()  # the old image is left alone


_BUILD_IN_A_PROCESS = """
import sys
from pathlib import Path
from kvmlab.guest.build import build_guest
build_guest(Path(sys.argv[1]), Path(sys.argv[2]), progress=lambda m: print(m, flush=True))
"""


def test_parallel_builds_take_turns_and_build_once(cache: Path, tmp_path: Path) -> None:
    """Two builds sharing a cache (two xdist workers): one writes, the other waits and reuses."""
    deb = tmp_path / "linux-image-test.deb"
    deb.write_bytes(fake_kernel_deb())
    lock = os.open(cache / guest.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as if a third build were running
    builds = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_IN_A_PROCESS, str(cache), str(deb)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for build in builds:
            assert build.stdout is not None
            assert build.stdout.readline().startswith("waiting for another build")
    finally:
        os.close(lock)
    outputs = [build.communicate(timeout=60)[0] for build in builds]
    assert [build.returncode for build in builds] == [0, 0]
    writes = sum("writing initramfs" in out for out in outputs)
    reuses = sum("reusing guest" in out for out in outputs)
    assert (writes, reuses) == (1, 1), outputs
    assert len(list(cache.glob("initrd-*.cpio.gz"))) == 1
    assert not list(cache.glob("**/*.tmp"))


def test_cached_kernel_download_is_used_without_apt(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cache / "downloads" / "linux-image-9.9.9-test-cloud-amd64_1_amd64.deb").write_bytes(
        fake_kernel_deb()
    )
    monkeypatch.setenv("PATH", "/nonexistent")
    image = build_guest(cache)
    assert image.kernel.read_bytes() == make_bzimage(RELEASE)


def test_metapackage_is_refused(cache: Path, tmp_path: Path) -> None:
    deb = tmp_path / "linux-image-cloud-amd64_1_amd64.deb"
    deb.write_bytes(make_deb({"./usr/share/doc/linux-image-cloud-amd64/copyright": b"x"}))
    with pytest.raises(GuestBuildError, match="metapackage"):
        build_guest(cache, deb)


def test_missing_everything_says_what_to_do(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sources, "host_kernels", list)
    with pytest.raises(
        GuestBuildError, match=r"apt-get not found and no kernel given: pass kernel=PATH"
    ):
        build_guest(cache)
    assert issubclass(GuestBuildError, KvmlabError)


def test_bare_vmlinuz_without_modules(cache: Path, tmp_path: Path) -> None:
    vmlinuz = tmp_path / "vmlinuz-0.0.0-nowhere"
    vmlinuz.write_bytes(make_bzimage("0.0.0-nowhere"))
    messages: list[str] = []
    image = build_guest(cache, vmlinuz, progress=messages.append)
    assert not [n for n in initrd_files(image) if n.endswith(".ko")]
    assert any("no modules for kernel 0.0.0-nowhere" in m for m in messages)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "kvmlab" / "guest"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "kvmlab" / "guest"


# --------------------------------------------------------------------------- real QEMU

QEMU_BINARIES = {
    "qemu-7.2": shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64",
    "qemu-10.0": "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64",  # .ci/install-qemu-backports
}
MACS = ("52:54:00:12:34:56", "52:54:00:12:34:57")
BOOT_TIMEOUT = 90.0
POWERDOWN_TIMEOUT = 20.0


def _need_binary(name: str) -> str:
    binary = QEMU_BINARIES[name]
    if os.access(binary, os.X_OK):
        return binary
    if name == "qemu-7.2" and os.environ.get("CI") == "true":
        pytest.fail(
            f"{binary} not found, and CI=true requires it (apt-get install qemu-system-x86)"
        )
    pytest.skip(f"{binary} not found")


@pytest.fixture(scope="module")
def real_guest() -> GuestImage:
    """The real guest, built (or reused) in the user's cache: a cold build downloads about
    28 MB; a warm one takes a fraction of a second."""
    try:
        return build_guest()
    except GuestBuildError as err:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"cannot build the guest here: {err}")


def _qmp(sock_path: Path, *commands: str) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        with sock.makefile("rwb") as stream:
            stream.readline()  # greeting
            for command in ("qmp_capabilities", *commands):
                stream.write(json.dumps({"execute": command}).encode() + b"\n")
                stream.flush()
                while True:  # skip events until the reply
                    reply = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        assert "error" not in reply, reply
                        break


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, deadline: float) -> Iterator[bytes]:
    """Yield serial output lines until one equals ``marker`` or the deadline passes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r")
                yield line
                if line == marker:
                    return
        elif proc.poll() is not None:
            return


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("qemu", list(QEMU_BINARIES))
def test_real_guest_boots_and_powers_down(
    qemu: str, real_guest: GuestImage, tmp_path: Path
) -> None:
    binary = _need_binary(qemu)
    # Debian's kernel has the PVH entry: the guest boots its unpacked vmlinux, not the bzImage.
    assert real_guest.kernel.name.startswith("vmlinux-")
    assert has_pvh_entry(real_guest.kernel.read_bytes())
    sock_path = tmp_path / "qmp.sock"
    argv = [binary, "-accel", "tcg", "-m", "256", "-smp", "2"]
    argv += ["-kernel", str(real_guest.kernel), "-initrd", str(real_guest.initrd)]
    argv += [
        "-append",
        "console=ttyS0",
        "-nographic",
        "-qmp",
        f"unix:{sock_path},server=on,wait=off",
    ]
    # Debian's cloud kernel has virtio-net only (no e1000 driver), so both NICs are virtio.
    for i, mac in enumerate(MACS):
        argv += ["-netdev", f"user,id=n{i}", "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
    stderr = (tmp_path / "qemu.stderr").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    seen: list[bytes] = []
    try:
        start = time.monotonic()
        seen = list(_read_until(proc, b"KVMLAB-FACTS-END", start + BOOT_TIMEOUT))
        text = [line.decode(errors="replace") for line in seen]
        assert "KVMLAB-FACTS-END" in text, "no facts; serial tail:\n" + "\n".join(text[-30:])
        facts = text[text.index("KVMLAB-BOOT-OK") : text.index("KVMLAB-FACTS-END")]
        assert facts[2] == "CPUS 2"
        mem = int(facts[1].removeprefix("MEM "))
        assert 180_000 < mem < 262_144
        assert facts[3:] == [f"NIC eth{i} {mac}" for i, mac in enumerate(MACS)]

        _qmp(sock_path, "system_powerdown")
        assert proc.wait(POWERDOWN_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        stderr.close()
