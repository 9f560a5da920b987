"""wgrouter/wg.py against in-kernel WireGuard (generic netlink; `make test-qemu`).

The namespaces of tests/test_kernel_wg.py (cli with two uplinks A and B,
srv behind both), plus a second client peer with thousands of allowed IPs,
so that the dump spills a peer's allowed IPs over several messages.  The
in-process read must match `wg show wgc dump`, a set must touch only that
peer, and re-setting an unchanged endpoint through genetlink must clear the
cached source address as `wg set` does.
"""

import json
import subprocess
import sys

import pytest

from tests.fakerunner import REPO
from tests.test_kernel_wg import PORT, SERVER, cached_on_b, pair, sh  # noqa: F401 (pair: the fixture)

pytestmark = pytest.mark.lab

# 32 KiB per dump message at most (netlink_dump), 28 bytes per IPv4 allowed IP
MANY = 3000


def py(ns, code):
    """Run code in ``ns`` with this checkout importable; its last line is JSON."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    if r.returncode != 0:
        raise AssertionError("python in %s failed:\n%s" % (ns, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


READ = r"""
import json, subprocess
from wgrouter import wg, wgdump
def dump():
    out = subprocess.run(["wg", "show", "wgc", "dump"], capture_output=True, text=True, check=True).stdout
    return {p.public_key: list(p.__dict__.values())
            for p in wgdump.parse_devices(out, interface="wgc")["wgc"].peers}
c = wg.Client()
before = dump()
found, failed = c.read(["wgc", "nosuch0"])
after = dump()
print(json.dumps({"read": {p.public_key: list(p.__dict__.values()) for p in found.get("wgc", [])},
                  "order": [p.public_key for p in found.get("wgc", [])],
                  "dumps": [before, after], "failed": failed, "used": c.used,
                  "absent": "nosuch0" not in found}))
"""

SET = r"""
import json
from wgrouter import wg
c = wg.Client()
c.set_peer("wgc", KEY, ADDRESS, PORT, KEEPALIVE)
print(json.dumps(c.used))
"""


def _dump(pair):
    out = sh(pair.cli, "wg", "show", "wgc", "dump")
    return {line.split("\t")[0]: line.split("\t") for line in out.splitlines()[1:]}


def _add_many(pair):
    other = subprocess.run(["wg", "pubkey"], input=subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True).stdout,
        capture_output=True, text=True, check=True).stdout.strip()
    ips = ",".join("10.%d.%d.%d/32" % (100 + i // 65536, i // 256 % 256, i % 256) for i in range(MANY))
    sh(pair.cli, "wg", "set", "wgc", "peer", other, "endpoint", "[2001:db8::9]:51821",
       "persistent-keepalive", "25", "allowed-ips", ips + ",fd66::/64")
    return other


def test_genetlink_read_matches_wg_show_dump(pair):
    pair.ping()
    other = _add_many(pair)
    out = py(pair.cli, READ)
    assert out["used"] == {"wgc": "genetlink"} and out["failed"] == {} and out["absent"]
    assert out["read"] in out["dumps"]  # field for field, allowed IPs (spilled) included
    assert len(out["read"][other][6]) == MANY + 1
    srv = out["read"][pair.server_key]
    assert srv[1] == "%s:%d" % (SERVER, PORT) and srv[2] > 0 and srv[3] > 0 and srv[4] > 0


def test_genetlink_set_touches_only_that_peer(pair):
    pair.ping()
    other = _add_many(pair)
    before = _dump(pair)
    used = py(pair.cli, "KEY=%r\nADDRESS='203.0.113.5'\nPORT=4500\nKEEPALIVE=15\n" % other + SET)
    assert used == {"wgc": "genetlink"}
    after = _dump(pair)
    assert after[other][2] == "203.0.113.5:4500" and after[other][7] == "15"
    assert after[other][3] == before[other][3]  # its allowed IPs, all of them
    assert after[pair.server_key][2:4] == before[pair.server_key][2:4]
    assert after[pair.server_key][7] == before[pair.server_key][7]
    # update only: a key the device does not have is not added
    absent = subprocess.run(["wg", "pubkey"], input="YAnz6TDKWBFHvQ6KnR8w5WgnTRsCEq0ifmuFhFgL1Eo=\n",
                            capture_output=True, text=True, check=True).stdout.strip()
    py(pair.cli, "KEY=%r\nADDRESS='203.0.113.6'\nPORT=1\nKEEPALIVE=1\n" % absent + SET)
    assert set(_dump(pair)) == {pair.server_key, other}


def test_genetlink_same_endpoint_set_clears_cached_source(pair):
    # as tests/test_kernel_wg.py proves for `wg set`, through wgrouter.wg instead
    cached_on_b(pair)
    used = py(pair.cli, "KEY=%r\nADDRESS=%r\nPORT=%d\nKEEPALIVE=0\n" % (pair.server_key, SERVER, PORT) + SET)
    assert used == {"wgc": "genetlink"}
    # counted from the set on: starting python in a TCG guest takes seconds,
    # long enough for WireGuard's passive keepalive to leave from B before it
    pair.reset_counters()
    pair.ping()
    a, b = pair.counters()
    assert a > 0 and b == 0, "expected the new source A, saw A=%d B=%d" % (a, b)


DIAGNOSE = r"""
import json
from wgrouter import model, runner
from wgrouter.diagnose import facts

class NoWg(runner.Runner):
    def run(self, argv, timeout=5.0, input=None):
        if argv[0] == "wg":
            raise AssertionError("forked %r" % (argv,))
        return runner.Runner.run(self, argv, timeout=timeout, input=input)

peer = model.Peer("wgc", "srv", KEY, (), ())
config = model.Config(model.Settings(), (), (model.Tunnel("wgc", (peer,)),))
f = facts.gather("/nonexistent", config, NoWg(), sysctls=lambda names: {})
dev = f.wg["wgc"]
print(json.dumps({"via": f.wg_via, "error": f.wg_error, "listen_port": dev.listen_port, "fwmark": dev.fwmark,
                  "endpoint": dev.peer(KEY).endpoint, "route": f.routes.get(SERVER)}))
"""


def test_diagnose_reads_the_kernel_device_through_genetlink(pair):
    # diagnose reads as the daemon reads, the device's own fields included
    pair.ping()
    sh(pair.cli, "wg", "set", "wgc", "fwmark", "0xca6c")
    line = sh(pair.cli, "wg", "show", "wgc", "dump").splitlines()[0].split("\t")  # priv, pub, port, fwmark
    out = py(pair.cli, "KEY=%r\nSERVER=%r\n" % (pair.server_key, SERVER) + DIAGNOSE)
    assert out["via"] == {"wgc": "genetlink"} and out["error"] is None
    assert out["listen_port"] == int(line[2]) and line[3] == "0xca6c" and out["fwmark"] == 0xCA6C
    assert out["endpoint"] == "%s:%d" % (SERVER, PORT)
    assert out["route"]["dev"] == "c2" and out["route"]["error"] is None  # asked with the mark
