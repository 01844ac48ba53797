"""kvmlab's pytest plugin as a user's suite sees it (through pytester).

The plugin is registered by the ``pytest11`` entry point, so a user's test file
only names the fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from kvmlab.host.process import is_alive

pytest_plugins = ["pytester"]

USER_HELPERS = """
from kvmlab.spec.instance import HvParams, Instance, Nic


def make(name="u1"):
    return Instance(
        name=name,
        memory=128,
        nics=(Nic(mac="52:54:00:6b:03:01", mode="user"),),
        hvparams=HvParams(kernel_path="", vnc_bind_address=""),
    )
"""


def user_file(body: str) -> str:
    return USER_HELPERS + textwrap.dedent(body)


def test_lab_and_fake_lab_fixtures_boot_instances(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user=user_file(
            """
            def test_boots(lab, fake_lab):
                assert lab.backend.name == "fake"  # the default backend
                assert fake_lab.backend.name == "fake"
                assert lab.layout.root != fake_lab.layout.root
                for each in (lab, fake_lab):
                    info = each.start(make())
                    assert info.state == "running"
                    each.console("u1").expect("KVMLAB-BOOT-OK", timeout=10)

            def test_default_backend_is_fake(kvmlab_backend):
                assert kvmlab_backend == "fake"
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_an_instance_left_running_is_stopped_at_teardown(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    pytester.makepyfile(
        test_user=user_file(
            f"""
            import json

            def test_leaves_it_running(lab):
                info = lab.start(make())
                lab.console("u1").expect("KVMLAB-BOOT-OK", timeout=10)
                record = {{
                    "pid": info.pid,
                    "root": str(lab.layout.root),
                    "pidfile": str(lab.layout.pidfile("u1")),
                }}
                with open({str(record)!r}, "w") as handle:
                    json.dump(record, handle)
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    data = json.loads(record.read_text())
    try:
        assert not is_alive(data["pid"])
        assert not Path(data["root"]).exists()  # the state directory is removed too
    finally:
        if is_alive(data["pid"]):
            os.kill(data["pid"], 9)
        shutil.rmtree(data["root"], ignore_errors=True)


def test_a_failing_user_test_keeps_its_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user=user_file(
            """
            def test_kvmlab_plugin_fails_on_purpose(lab):
                lab.start(make())
                lab.console("u1").expect("KVMLAB-FACTS-END", timeout=10)
                assert False, "the user's check failed"
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    (report,) = [
        r
        for r in result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
        if r.when == "teardown"
    ]
    sections = {title: text for title, text in report.sections}
    kvmlab = [text for title, text in sections.items() if "kvmlab" in title]
    assert kvmlab, sections
    match = re.search(r"(/\S+)", kvmlab[0])
    assert match, kvmlab[0]
    kept = Path(match.group(1))
    try:
        assert kept.is_dir()
        assert (kept / "u1.serial.log").is_file()
        assert "KVMLAB-BOOT-OK" in (kept / "u1.serial.log").read_text()
        assert (kept / "u1.log").is_file()
        # And the user sees it in the failure report.
        result.stdout.fnmatch_lines(["*kvmlab*", f"*{kept}*"])
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_a_user_test_failing_before_any_start_gets_no_teardown_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    record = tmp_path / "root.txt"
    pytester.makepyfile(
        test_user=f"""
        def test_kvmlab_plugin_fails_before_starting(lab):
            with open({str(record)!r}, "w") as handle:
                handle.write(str(lab.layout.root))
            assert False, "the user's check failed"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    root = Path(record.read_text())
    try:
        result.assert_outcomes(failed=1, errors=0)
        assert not root.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_passing_user_test_keeps_no_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user=user_file(
            """
            def test_kvmlab_plugin_passes_quietly(lab):
                lab.start(make())
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    kept = Path(tempfile.gettempdir()) / "kvmlab-failed-test_kvmlab_plugin_passes_quietly"
    assert not kept.exists()
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    assert not any("kvmlab" in title for r in reports for title, _ in r.sections)


IMPORT_PROBE = r"""
import json, os, sys, threading, time

events = []
SPAWN = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork",
         "os.forkpty", "os.spawn"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
    if event in SPAWN:
        events.append([event, repr(args)[:300]])
    elif event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
        )
        if writes:
            events.append([event, repr(args)[:300]])
    elif event == "socket.connect":
        events.append([event, repr(args)[:300]])

sys.addaudithook(hook)
threads = threading.active_count()
began = time.perf_counter()
import kvmlab.testing.plugin
took = time.perf_counter() - began
children = []
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/children") as handle:
        children += handle.read().split()
print(json.dumps({
    "events": events,
    "children": children,
    "threads": threading.active_count() - threads,
    "took": took,
    "modules": sorted(m for m in sys.modules if m.startswith(("kvmlab", "qemu", "pydantic"))),
}))
"""


def test_importing_the_plugin_starts_and_probes_nothing(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("home", "cache", "state", "tmp", "cwd", "bin")}
    for path in dirs.values():
        path.mkdir()
    marker = tmp_path / "probed"
    # A QEMU that tells on whoever runs it.
    for name in ("qemu-system-x86_64", "kvm", "kvmlab-fake-kvm"):
        stub = dirs["bin"] / name
        stub.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\n')
        stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{dirs['bin']}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(dirs["home"]),
        "XDG_CACHE_HOME": str(dirs["cache"]),
        "XDG_STATE_HOME": str(dirs["state"]),
        "TMPDIR": str(dirs["tmp"]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("KVMLAB_STATE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        cwd=dirs["cwd"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["events"] == []  # no process, no file written, no socket
    assert report["children"] == []
    assert report["threads"] == 0  # e.g. no QMP loop thread
    assert not marker.exists()
    for name in ("home", "cache", "state", "tmp", "cwd"):
        assert list(dirs[name].iterdir()) == [], name
    heavy = {
        "kvmlab.lifecycle.hypervisor",
        "kvmlab.host.backends",
        "kvmlab.guest.build",
        "kvmlab.channels.qmp",
        "qemu.qmp",
    }
    assert not heavy.intersection(report["modules"]), report["modules"]
    assert report["took"] < 5.0  # imports pytest-side code only; nothing waits


def test_the_probe_would_see_a_process_and_a_file(tmp_path: Path) -> None:
    """The import probe is not blind: a module that runs something is caught."""
    (tmp_path / "noisy.py").write_text(
        "import subprocess\nsubprocess.run(['true'])\nopen('written', 'w').close()\n"
    )
    probe = IMPORT_PROBE.replace("import kvmlab.testing.plugin", "import noisy")
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = {event for event, _ in json.loads(result.stdout)["events"]}
    assert {"subprocess.Popen", "open"} <= events


def test_fixtures_under_xdist_workers(pytester: pytest.Pytester) -> None:
    """Two xdist workers, the same instance name in every test: state dirs never meet."""
    pytester.makepyfile(
        test_user=user_file(
            """
            import os
            import pytest

            @pytest.mark.parametrize("n", range(6))
            def test_same_name_everywhere(lab, n):
                assert os.environ["PYTEST_XDIST_WORKER"].startswith("gw")
                info = lab.start(make("u1"))
                lab.console("u1").expect("KVMLAB-BOOT-OK", timeout=10)
                assert info.pid is not None
                lab.stop("u1")
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=6)
    assert re.search(r"2 workers", result.stdout.str()), result.stdout.str()


def test_a_failing_user_test_shows_what_the_guest_saw(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user=user_file(
            """
            from kvmlab.channels.qmp import qmp_execute

            def test_kvmlab_plugin_fails_on_purpose(fake_lab):
                fake_lab.start(make())
                fake_lab.console("u1").expect("KVMLAB-FACTS-END", timeout=10)
                qmp_execute(fake_lab.layout.qmp_socket("u1"), "stop")
                assert False, "the user's check failed"
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    (report,) = [
        r
        for r in result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
        if r.when == "call"
    ]
    sections = dict(report.sections)
    console = sections["kvmlab u1: serial console (last 30 lines)"]
    assert console.splitlines()[-1] == "KVMLAB-FACTS-END"
    assert "kvmlab start:" in sections["kvmlab u1: QEMU log (last 30 lines)"]
    qmp = [
        json.loads(line)
        for line in sections["kvmlab u1: QMP traffic kvmlab saw (last 30 lines)"].splitlines()
    ]
    assert [r.get("command") or r.get("event") for r in qmp] == ["stop", "STOP"]
    # In the failure output the user reads, under the assertion.
    result.stdout.fnmatch_lines(
        [
            "*the user's check failed*",
            "*kvmlab u1: serial console (last 30 lines)*",
            "KVMLAB-BOOT-OK",
            "*kvmlab u1: QMP traffic kvmlab saw*",
            '*"event":"STOP"*',
        ]
    )


def test_a_guest_that_panics_fails_the_users_wait_with_the_panic(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMLAB_FAKE_PANIC_AFTER", "0")
    pytester.makepyfile(
        test_user=user_file(
            """
            def test_waits_for_a_boot_that_never_comes(lab):
                lab.start(make())
                lab.console("u1").expect("KVMLAB-BOOT-OK", timeout=600)
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GuestDownError: the guest of u1 panicked:",
            "*Kernel panic - not syncing: VFS: Unable to mount root fs*",
        ]
    )
