"""The accelerator cache (``accel.json``): shared by processes, written under a lock, pruned.

The probe itself (a KVM boot of the test guest) is replaced by a stub that counts its
calls in a file, and ``/dev/kvm`` is made to look usable, so these tests run anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmlab.host import accel

STUB = """
import os, sys, time
from pathlib import Path
from kvmlab.host import accel
from kvmlab.guest import build as guest

calls, binary = Path(sys.argv[1]), sys.argv[2]
real_exists, real_access = os.path.exists, os.access
os.path.exists = lambda p: p == "/dev/kvm" or real_exists(p)
os.access = lambda p, mode: p == "/dev/kvm" or real_access(p, mode)
guest.find_built_guest = lambda cache_dir=None: guest.GuestImage(Path("k"), Path("i"))

def probe(binary, kernel, initrd, timeout=accel.PROBE_TIMEOUT):
    with calls.open("a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(0.5)  # a probe takes a while: the others must wait, not probe too
    return False, "stub: KVM does not boot here"

accel.probe_kvm_boot = probe
print(accel.probe_accelerator(binary))
"""


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def fake_binary(tmp_path: Path, name: str = "qemu", content: str = "#!/bin/sh\n") -> str:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(0o755)
    return str(path)


def test_parallel_probes_of_one_binary_probe_once(tmp_path: Path, cache_home: Path) -> None:
    binary = fake_binary(tmp_path)
    calls = tmp_path / "calls"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STUB, str(calls), binary],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert len(calls.read_text().split()) == 1  # one probe; the others read its verdict
    assert outputs.count("('tcg', 'stub: KVM does not boot here')") == 1
    assert outputs.count("('tcg', 'stub: KVM does not boot here (cached)')") == 2
    stored = json.loads((cache_home / "kvmlab" / "accel.json").read_text())
    assert list(stored.values()) == [["tcg", "stub: KVM does not boot here"]]
    assert not list((cache_home / "kvmlab").glob("*.tmp"))


def test_stale_entries_are_dropped_when_the_cache_is_written(
    tmp_path: Path, cache_home: Path
) -> None:
    kept = fake_binary(tmp_path, "kept")
    changed = fake_binary(tmp_path, "changed")
    gone = fake_binary(tmp_path, "gone")
    entries = {
        accel._cache_key(kept): ["tcg", "current"],
        accel._cache_key(changed): ["tcg", "changed since"],
        accel._cache_key(gone): ["tcg", "removed since"],
        accel._cache_key(kept).rsplit("|", 1)[0] + "|another-boot": ["kvm", "another boot"],
        f"{os.path.realpath(kept)}|1|": ["tcg", "the old key format: path|mtime|boot"],
    }
    Path(changed).write_text("#!/bin/sh\n# upgraded: another size\n")
    os.unlink(gone)
    cache = cache_home / "kvmlab" / "accel.json"
    cache.parent.mkdir(parents=True)
    accel._write_cache(cache, entries)
    assert json.loads(cache.read_text()) == {accel._cache_key(kept): ["tcg", "current"]}


def test_a_changed_binary_is_probed_again(tmp_path: Path, cache_home: Path) -> None:
    binary = fake_binary(tmp_path)
    calls = tmp_path / "calls"
    run = [sys.executable, "-c", STUB, str(calls), binary]
    subprocess.run(run, check=True, capture_output=True)
    subprocess.run(run, check=True, capture_output=True)
    assert len(calls.read_text().split()) == 1
    Path(binary).write_text("#!/bin/sh\n# a new build of the same path\n")
    subprocess.run(run, check=True, capture_output=True)
    assert len(calls.read_text().split()) == 2
    stored = json.loads((cache_home / "kvmlab" / "accel.json").read_text())
    assert list(stored) == [accel._cache_key(binary)]  # the old entry is gone


def test_an_unreadable_cache_file_is_probed_and_rewritten(tmp_path: Path, cache_home: Path) -> None:
    cache = cache_home / "kvmlab" / "accel.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    binary = fake_binary(tmp_path)
    calls = tmp_path / "calls"
    subprocess.run([sys.executable, "-c", STUB, str(calls), binary], check=True)
    assert list(json.loads(cache.read_text())) == [accel._cache_key(binary)]
