"""In-kernel WireGuard facts wgrouter relies on (run by `make test-qemu`).

The kernel caches the source address a peer was last reached from, and a
route change alone does not move it when a source rule (mwan3, or OpenWrt's
ip4table) keeps the old source routable: a failback never heals itself.
OPENWRT.md claims `wg set IF peer K endpoint IP:PORT`, even with the same
endpoint, clears that cache.  This test proves it with two namespaces:

    cli  c1 172.16.1.2 (A) ---- s1 172.16.1.1  srv  192.0.2.1 on lo, UDP 51820
         c2 172.16.2.2 (B) ---- s2 172.16.2.1

nft counters in srv count the tunnel's UDP packets by source address.  A
second test shows the other half: without source rules, a route over another
device moves the source by itself.
"""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from tests.lab import wgdev

pytestmark = pytest.mark.lab

A, B = "172.16.1.2", "172.16.2.2"
GW_A, GW_B = "172.16.1.1", "172.16.2.1"
SERVER = "192.0.2.1"
PORT = 51820
TUN_CLI, TUN_SRV = "10.201.0.2", "10.201.0.1"
KERNEL_ONLY = "needs in-kernel WireGuard (run make test-qemu)"


def _unavailable():
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "wg", "nft", "ping"):
        if shutil.which(tool) is None:
            return "needs %s installed" % tool
    ns = "tkwg%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if r.returncode != 0:
        return "network namespaces unavailable: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if not wgdev.kernel_has_wireguard():
        return KERNEL_ONLY
    return None


def sh(ns, *argv, check=True, input=None):
    r = subprocess.run(["ip", "netns", "exec", ns] + [str(a) for a in argv],
                       capture_output=True, text=True, timeout=60, input=input)
    if check and r.returncode != 0:
        raise AssertionError("%s in %s: exit %d: %s" % (" ".join(map(str, argv)), ns,
                                                        r.returncode, r.stderr.strip()))
    return r.stdout


class Pair:
    """The two namespaces above, with in-kernel WireGuard on both sides."""

    def __init__(self, source_rules=True):
        self.source_rules = source_rules
        prefix = "t%dk" % os.getpid()
        self.cli, self.srv = prefix + "-cli", prefix + "-srv"
        self.tmp = tempfile.mkdtemp(prefix="wgkern-")

    def build(self):
        for ns in (self.cli, self.srv):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            sh(ns, "ip", "link", "set", "lo", "up")
            # replies to A may arrive while the main route points elsewhere
            sh(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
               "net.ipv4.conf.default.rp_filter=0")
        for c, s, ca, sa in (("c1", "s1", A, GW_A), ("c2", "s2", B, GW_B)):
            subprocess.run(["ip", "link", "add", c, "netns", self.cli, "type", "veth",
                            "peer", "name", s, "netns", self.srv],
                           check=True, capture_output=True)
            sh(self.cli, "ip", "addr", "add", ca + "/24", "dev", c)
            sh(self.srv, "ip", "addr", "add", sa + "/24", "dev", s)
            sh(self.cli, "ip", "link", "set", c, "up")
            sh(self.srv, "ip", "link", "set", s, "up")
        sh(self.srv, "ip", "addr", "add", SERVER + "/32", "dev", "lo")
        # mwan3-style source rules: traffic from a WAN's address leaves by that WAN
        for table, src, gw, dev in ((101, A, GW_A, "c1"), (102, B, GW_B, "c2")):
            sh(self.cli, "ip", "route", "add", "default", "via", gw, "dev", dev,
               "table", table)
            if self.source_rules:
                sh(self.cli, "ip", "rule", "add", "from", src, "lookup", table,
                   "pref", 1000 + table)
        sh(self.cli, "ip", "route", "add", SERVER, "via", GW_B, "dev", "c2")
        sh(self.srv, "nft", "-f", "-", input="""
table inet wgk {
    counter from_a {}
    counter from_b {}
    chain input {
        type filter hook input priority 0;
        ip saddr %s udp dport %d counter name from_a
        ip saddr %s udp dport %d counter name from_b
    }
}
""" % (A, PORT, B, PORT))
        keys = {}
        for side in ("cli", "srv"):
            key = os.path.join(self.tmp, side + ".key")
            with open(key, "w") as f:
                f.write(subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                                       check=True).stdout)
            pub = subprocess.run(["wg", "pubkey"], input=open(key).read(), capture_output=True,
                                 text=True, check=True).stdout.strip()
            keys[side] = (key, pub)
        sh(self.cli, "ip", "link", "add", "wgc", "type", "wireguard")
        sh(self.srv, "ip", "link", "add", "wgs", "type", "wireguard")
        sh(self.cli, "wg", "set", "wgc", "private-key", keys["cli"][0],
           "peer", keys["srv"][1], "allowed-ips", TUN_SRV + "/32",
           "endpoint", "%s:%d" % (SERVER, PORT))
        sh(self.srv, "wg", "set", "wgs", "listen-port", PORT, "private-key", keys["srv"][0],
           "peer", keys["cli"][1], "allowed-ips", TUN_CLI + "/32")
        for ns, dev, addr in ((self.cli, "wgc", TUN_CLI), (self.srv, "wgs", TUN_SRV)):
            sh(ns, "ip", "addr", "add", addr + "/24", "dev", dev)
            sh(ns, "ip", "link", "set", dev, "up")
        self.server_key = keys["srv"][1]

    def teardown(self):
        for ns in (self.cli, self.srv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ping(self, count=3):
        sh(self.cli, "ping", "-c", count, "-i", "0.2", "-W", int(10 * wgdev.scale()), TUN_SRV)

    def counters(self):
        """(packets from A, packets from B) seen by srv on the WireGuard port."""
        out = []
        for name in ("from_a", "from_b"):
            text = sh(self.srv, "nft", "list", "counter", "inet", "wgk", name)
            out.append(int(re.search(r"packets (\d+)", text).group(1)))
        return tuple(out)

    def reset_counters(self):
        sh(self.srv, "nft", "reset", "counters", "table", "inet", "wgk")

    def route_source(self):
        """The source the cli's routing picks for SERVER (no cache involved)."""
        return re.search(r"\bsrc (\S+)", sh(self.cli, "ip", "route", "get", SERVER)).group(1)


@pytest.fixture
def pair(request):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    p = Pair(**getattr(request, "param", {}))
    try:
        p.build()
        yield p
    finally:
        p.teardown()


def start_on_b(pair):
    """The tunnel comes up over B, the route to the server: B's source gets cached."""
    pair.ping()
    assert int(sh(pair.cli, "wg", "show", "wgc", "latest-handshakes").split()[1]) > 0
    a, b = pair.counters()
    assert a == 0 and b > 0, "initial path should be B, saw A=%d B=%d" % (a, b)


def route_via_a(pair):
    """Routing now prefers A: (packets from A, packets from B) of the next pings."""
    pair.reset_counters()
    sh(pair.cli, "ip", "route", "replace", SERVER, "via", GW_A, "dev", "c1")
    assert pair.route_source() == A
    pair.ping()
    return pair.counters()


def cached_on_b(pair):
    """Up over B, then routed via A, and the kernel keeps sending from the
    cached B (the source rule keeps B routable over c2, so nothing
    invalidates it)."""
    start_on_b(pair)
    a, b = route_via_a(pair)
    assert a == 0 and b > 0, "expected the cached source B, saw A=%d B=%d" % (a, b)


def test_same_endpoint_set_clears_cached_source(pair):
    cached_on_b(pair)
    # re-setting the very same endpoint drops the cache: next packets use A
    pair.reset_counters()
    sh(pair.cli, "wg", "set", "wgc", "peer", pair.server_key,
       "endpoint", "%s:%d" % (SERVER, PORT))
    pair.ping()
    a, b = pair.counters()
    assert a > 0 and b == 0, "expected the new source A, saw A=%d B=%d" % (a, b)
    # and the server now sees the client at A
    ep = sh(pair.srv, "wg", "show", "wgs", "endpoints").split()[1]
    assert ep.startswith(A + ":")


@pytest.mark.parametrize("pair", [{"source_rules": False}], indirect=True)
def test_without_source_rules_a_device_change_moves_the_source(pair):
    # OPENWRT.md: (IPv4) the kernel drops the cached source itself when the
    # route's output device differs from the cached one; only source rules
    # (mwan3, ip4table) keep a stale source alive
    start_on_b(pair)
    a, b = route_via_a(pair)
    assert a > 0 and b == 0, "expected A without any wg set, saw A=%d B=%d" % (a, b)
