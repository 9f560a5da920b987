"""wgrouter/wg.py against real wireguard-go (the UAPI transport).

Two namespaces joined by a veth, wireguard-go in each, a handshake between
them; the router side has a second peer with several allowed IPs.  The
in-process read must match `wg show IF dump`, and a set must change only
that peer's endpoint and keepalive.  (The kernel: tests/test_wg_kernel.py.)
"""

import os
import shutil
import subprocess
import time

import pytest

from tests.fakerunner import NetNS, netns_unavailable

pytestmark = pytest.mark.lab

RUN_DIR = "/var/run/wireguard"

CODE = r"""
import json, subprocess
from wgrouter import model, runner, shell, wg, wgdump

def dump():
    out = subprocess.run(["wg", "show", DEV, "dump"], capture_output=True, text=True, check=True).stdout
    return {p.public_key: list(p.__dict__.values())
            for p in wgdump.parse_devices(out, interface=DEV)[DEV].peers}

class NoFork(runner.Runner):
    def run(self, argv, timeout=5.0, input=None):
        raise AssertionError("forked %r" % (argv,))
    spawn = run

out = {}
client = wg.Client()
before = dump()
found, failed = client.read([DEV])
after = dump()
out["read"] = {p.public_key: list(p.__dict__.values()) for p in found[DEV]}
out["dumps"] = [before, after]
out["failed"] = failed
out["used"] = client.used
config = model.Config(model.Settings(), (), (model.Tunnel(DEV, ()),))
s = shell.Shell(config, runner=NoFork(), root=ROOT, wg=client)
_, peers, present = s.observe(False)
out["shell"] = {k[1]: [v.endpoint, v.rx > 0] for k, v in peers.items()}
out["present"] = sorted(present)
client.set_peer(DEV, OTHER, "203.0.113.5", 4500, 15)
out["after_set"] = dump()
client.set_peer(DEV, ABSENT, "203.0.113.6", 1, 1)  # update only: not created
out["after_absent"] = dump()
print(json.dumps(out))
"""


def _genkey():
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True).stdout.strip()
    return priv, pub


def _start(ns, dev):
    proc = subprocess.Popen(ns.exec_argv(["wireguard-go", "-f", dev]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = os.path.join(RUN_DIR, dev + ".sock")
    for _ in range(200):
        if os.path.exists(sock):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("wireguard-go %s did not start" % dev)


def test_uapi_read_matches_wg_show_and_set_touches_one_peer(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    if not shutil.which("wireguard-go") or not shutil.which("wg"):
        pytest.skip("needs wireguard-go and wg")
    dev_r, dev_v = "wgu%dr" % os.getpid(), "wgu%dv" % os.getpid()
    (r_priv, r_pub), (v_priv, v_pub) = _genkey(), _genkey()
    _, other = _genkey()
    _, absent = _genkey()
    procs = []
    with NetNS() as router, NetNS() as vpn:
        try:
            router.ip("link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", vpn.name)
            router.ip("addr", "add", "172.30.0.2/24", "dev", "up0")
            vpn.ip("addr", "add", "172.30.0.1/24", "dev", "dn0")
            router.ip("link", "set", "up0", "up")
            vpn.ip("link", "set", "dn0", "up")
            procs.append(_start(router, dev_r))
            procs.append(_start(vpn, dev_v))
            (tmp_path / "r").write_text(r_priv)
            (tmp_path / "v").write_text(v_priv)
            subprocess.run(router.exec_argv([
                "wg", "set", dev_r, "private-key", tmp_path / "r",
                "peer", v_pub, "endpoint", "172.30.0.1:51820", "allowed-ips", "10.77.0.1/32",
                "peer", other, "endpoint", "[2001:db8::9]:51821", "persistent-keepalive", "25",
                "allowed-ips", "10.66.0.0/24,10.66.1.0/24,fd66::/64"]), check=True)
            subprocess.run(vpn.exec_argv([
                "wg", "set", dev_v, "private-key", tmp_path / "v", "listen-port", "51820",
                "peer", r_pub, "allowed-ips", "10.77.0.2/32"]), check=True)
            router.ip("addr", "add", "10.77.0.2/24", "dev", dev_r)
            vpn.ip("addr", "add", "10.77.0.1/24", "dev", dev_v)
            router.ip("link", "set", dev_r, "up")
            vpn.ip("link", "set", dev_v, "up")
            subprocess.run(router.exec_argv(["ping", "-c", "2", "-W", "5", "10.77.0.1"]),
                           check=True, capture_output=True)
            code = "DEV=%r\nOTHER=%r\nABSENT=%r\nROOT=%r\n" % (dev_r, other, absent, str(tmp_path)) + CODE
            out = router.python(code)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    assert out["used"] == {dev_r: "uapi"} and out["failed"] == {}
    # the same rows as wg's (traffic may move the counters between two reads)
    assert out["read"] in out["dumps"]
    row = out["read"][v_pub]
    assert row[1] == "172.30.0.1:51820" and row[2] > 0 and row[3] > 0 and row[4] > 0
    assert out["read"][other][1:] == ["[2001:db8::9]:51821", 0, 0, out["read"][other][4], 25,
                                      ["10.66.0.0/24", "10.66.1.0/24", "fd66::/64"]]
    # the shell's check: the model objects, without forking anything
    assert out["shell"] == {v_pub: ["172.30.0.1:51820", True], other: ["[2001:db8::9]:51821", False]}
    assert out["present"] == [dev_r]
    # set: only that peer's endpoint and keepalive changed
    before, after = out["dumps"][1], out["after_set"]
    assert after[other][1] == "203.0.113.5:4500" and after[other][5] == 15
    assert after[other][6] == before[other][6]  # its allowed IPs
    assert after[v_pub][1] == before[v_pub][1] and after[v_pub][5:] == before[v_pub][5:]
    assert set(after) == {v_pub, other}
    assert set(out["after_absent"]) == {v_pub, other}  # update only: no new peer


def test_daemon_forks_nothing_in_steady_state(lab_factory):
    """A healthy tunnel, nothing changing: ten checks and not one process."""
    from tests.lab import scenarios, topology

    if not shutil.which("strace"):
        pytest.skip("needs strace")
    lab = lab_factory()
    lab.start_wgrouter(check_interval=1, endpoint_host=topology.VPN_ADDRESSES[0])
    assert lab.wait_for(lambda: scenarios.peer_status(lab).get("state") == "up", 30)
    assert lab.wait_for(lab.tunnel_works, 30)
    time.sleep(3)  # the first checks after the handshake settle
    trace = os.path.join(lab.logdir, "strace.txt")
    checks0 = scenarios.status(lab)["wakeups"]
    subprocess.run(["timeout", "-s", "INT", "10", "strace", "-f", "-qq", "-o", trace,
                    "-e", "trace=clone,clone3,fork,vfork,execve", "-p", str(lab.wgrouter.pid)])
    woke = scenarios.status(lab)["wakeups"] - checks0
    with open(trace) as f:
        calls = [line for line in f if "(" in line and "resumed" not in line]
    assert woke >= 8  # the daemon did run its checks meanwhile
    assert calls == []
    assert scenarios.peer_status(lab)["state"] == "up"
