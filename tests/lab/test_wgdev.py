"""tests/lab/wgdev.py: the lab's choice between kernel WireGuard and wireguard-go."""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from tests.lab import wgdev
from tests.test_kernel_wg import pair, sh  # noqa: F401 (pair: the fixture)


@pytest.fixture
def probe(monkeypatch):
    """Set what kernel_has_wireguard() answers, without touching the system."""
    def set_answer(value):
        monkeypatch.setattr(wgdev, "_kernel", [value])
    monkeypatch.delenv("WGROUTER_LAB_KERNEL_WG", raising=False)
    return set_answer


@pytest.mark.parametrize("env, kernel, expected", [
    (None, True, wgdev.KERNEL),
    (None, False, wgdev.USERSPACE),
    ("0", True, wgdev.USERSPACE),
    ("0", False, wgdev.USERSPACE),
    ("1", True, wgdev.KERNEL),
    ("", False, wgdev.USERSPACE),
])
def test_backend_choice(probe, monkeypatch, env, kernel, expected):
    probe(kernel)
    if env is not None:
        monkeypatch.setenv("WGROUTER_LAB_KERNEL_WG", env)
    assert wgdev.backend() == expected


def test_forcing_kernel_without_one_is_an_error(probe, monkeypatch):
    probe(False)
    monkeypatch.setenv("WGROUTER_LAB_KERNEL_WG", "1")
    with pytest.raises(wgdev.WgDevError, match="has no WireGuard"):
        wgdev.backend()


@pytest.mark.parametrize("value, expected", [
    (None, 1.0), ("5", 5.0), ("2.5", 2.5), ("0.1", 1.0), ("fast", 1.0)])
def test_scale(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("WGROUTER_LAB_SCALE", raising=False)
    else:
        monkeypatch.setenv("WGROUTER_LAB_SCALE", value)
    assert wgdev.scale() == expected


@pytest.mark.lab
def test_kernel_has_wireguard_matches_ip_link(pair):
    # the fixture built wgc with 'ip link add type wireguard' (in-kernel
    # WireGuard only: the QEMU tier), so the probe must agree
    assert wgdev.kernel_has_wireguard() is True
    assert "wireguard" in sh(pair.cli, "ip", "-d", "link", "show", "wgc")


class FakeLab:
    """Records ``ip`` calls; answers with a fixed return code."""

    def __init__(self, rc=0):
        self.calls = []
        self.rc = rc

    def ip(self, ns, *args, check=True):
        self.calls.append((ns,) + tuple(str(a) for a in args))
        return subprocess.CompletedProcess(args, self.rc, "", "boom" if self.rc else "")


def test_kernel_start_and_stop_commands(probe):
    probe(True)
    lab = FakeLab()
    h = wgdev.start(lab, "router", "wg1r")
    assert h.kind == wgdev.KERNEL and h.proc is None
    assert lab.calls == [("router", "link", "add", "dev", "wg1r", "type", "wireguard")]
    wgdev.stop(h)
    assert lab.calls[-1] == ("router", "link", "del", "wg1r")


def test_kernel_start_failure_names_device_and_namespace(probe):
    probe(True)
    with pytest.raises(wgdev.WgDevError, match="wg1v.*in vpn: boom"):
        wgdev.start(FakeLab(rc=2), "vpn", "wg1v")


class NetnsLab:
    """The slice of topology.Lab that wgdev uses, over one real namespace."""

    def __init__(self, name):
        self.name = name
        self.logdir = tempfile.mkdtemp(prefix="wgdev-")
        self.procs = []

    def ip(self, ns, *args, check=True):
        return subprocess.run(["ip", "-n", self.name] + [str(a) for a in args],
                              capture_output=True, text=True, check=check)

    def popen(self, ns, *cmd, stdout=None, stderr=None):
        p = subprocess.Popen(["ip", "netns", "exec", self.name] + list(cmd),
                             stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        stdout.close()
        self.procs.append(p)
        return p

    def log(self, name):
        return os.path.join(self.logdir, name)

    def stop_process(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        if p in self.procs:
            self.procs.remove(p)


@pytest.mark.lab
def test_start_stop_real_device():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = "twgd%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("network namespaces unavailable")
    lab = NetnsLab(name)
    try:
        kind = wgdev.backend()
        if kind == wgdev.USERSPACE and shutil.which("wireguard-go") is None:
            pytest.skip("no kernel WireGuard and no wireguard-go")
        dev = "wgd%d" % os.getpid()
        h = wgdev.start(lab, "x", dev)
        assert h.kind == kind
        shown = subprocess.run(["ip", "netns", "exec", name, "wg", "show", dev, "private-key"],
                               capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        wgdev.stop(h)
        wgdev.stop(h)  # twice is harmless
        assert lab.ip("x", "link", "show", dev, check=False).returncode != 0
        assert not os.path.exists(os.path.join(wgdev.WG_RUN_DIR, dev + ".sock"))
        assert lab.procs == []
    finally:
        for p in lab.procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(lab.logdir, ignore_errors=True)
