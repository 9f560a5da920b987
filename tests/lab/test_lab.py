"""The dual-WAN lab proves each fault is real, using the stock baseline."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import require_lab
from tests.lab import cleanup
from tests.lab import faults
from tests.lab import observe
from tests.lab import topology
from tests.lab import ucifile

pytestmark = pytest.mark.lab

VPN_A, VPN_B = topology.VPN_ADDRESSES


def replying(lab):
    """A probe stream from the LAN host, once the tunnel answers it."""
    ps = observe.ProbeStream(lab)
    assert ps.wait_reply_after(time.time(), 10) is not None
    return ps


def _no_reply_for(stream, t, seconds):
    """Sleep, then count replies to probes sent in [t, t+seconds)."""
    time.sleep(max(0.0, t + seconds + 0.3 - time.time()))
    assert stream.sent_between(t, t + seconds) > seconds / stream.interval / 2
    return stream.replied_between(t, t + seconds)


# ------------------------------------------------------------ module lab


def test_start_state(lab):
    cap = observe.Capture(lab)
    try:
        t = time.time()
        assert observe.tunnel_works(lab, 5)
        assert lab.wait_for(lambda: cap.tunnel_packets(t), 3)
        assert cap.tunnel_devices(t) == ["wan"]
        assert cap.leaks(t) == []
    finally:
        cap.stop()
    assert observe.route_device(lab, topology.PROBE_TARGET) == lab.router_wg
    assert observe.route_device(lab, VPN_A) == "wan"
    assert lab.netifd.dep == ("wan", VPN_A)
    age = observe.handshake_age(lab)
    assert age is not None and age < 60
    # the server sees the router behind ispa's masquerade
    assert lab.vpn_endpoint().startswith(topology.ISPA_UP + ":")
    assert lab.notes["ispb_udp_timeout_30s"] is True


def test_network_config_is_openwrt_uci(lab):
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        sections = ucifile.parse(f.read())
    by = {(s[".type"], s[".name"]): s for s in sections}
    assert by[("interface", "wan")]["device"] == "wan"
    assert by[("interface", "wanb")]["gateway"] == "100.64.2.1"
    wg = by[("interface", lab.router_wg)]
    assert wg["proto"] == "wireguard"
    assert wg["private_key"] == lab.keys["router"]["private"]
    assert wg["addresses"] == ["10.200.0.2/24"]
    peer = by[("wireguard_" + lab.router_wg, "vpn")]
    assert peer["public_key"] == lab.keys["vpn"]["public"]
    assert peer["endpoint_host"] == "vpn.lab.test"
    assert peer["endpoint_port"] == "51820"
    assert peer["allowed_ips"] == ["10.99.0.0/24", "10.200.0.1/32"]
    assert peer["route_allowed_ips"] == "1"
    assert peer["persistent_keepalive"] == "25"


def test_dns_move_and_address_down(lab):
    assert lab.resolve("vpn") == [VPN_A]
    cap = observe.Capture(lab)
    try:
        faults.dns_move(lab, "vpn", VPN_B)
        assert lab.resolve("vpn") == [VPN_B]
        assert lab.resolve("vpn", ns="router") == [VPN_B]
        faults.vpn_address_down(lab, VPN_A)
        # the tunnel still points at the old address, which no longer answers
        ps = observe.ProbeStream(lab)
        t = time.time()
        assert _no_reply_for(ps, t, 1.5) == 0
        # re-resolving (what the watchdog does) follows the move
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", "vpn.lab.test:51820")
        t2 = time.time()
        assert ps.wait_reply_after(t2, 15) is not None
        assert lab.wait_for(lambda: VPN_B in {p["dst"] for p in cap.tunnel_packets(t2)}, 3)
        ps.stop()
    finally:
        cap.stop()
        faults.vpn_address_up(lab)
        faults.dns_move(lab, "vpn", VPN_A)
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", "%s:51820" % VPN_A)
    assert lab.resolve("vpn") == [VPN_A]
    assert observe.tunnel_works(lab, 15)


def test_silent_failure_baseline_never_recovers(lab):
    ps = observe.ProbeStream(lab)
    try:
        assert ps.wait_reply_after(time.time(), 10) is not None
        n_actions = len(lab.watchdog.actions)
        lab.watchdog.stale_after = 3  # scaled down from 150 s
        t = faults.silent_failure(lab, "wan")
        assert _no_reply_for(ps, t, 8) == 0
        # netifd saw nothing: link and addresses up, tunnel still pinned to wan
        assert "wan" in lab.netifd.up
        assert lab.netifd.dep == ("wan", VPN_A)
        assert observe.route_device(lab, VPN_A) == "wan"
        assert faults.dropped(lab, "wan") > 0
        # the watchdog did act (handshake older than its threshold), in vain
        assert len(lab.watchdog.actions) > n_actions
        t2 = faults.restore_upstream(lab)
        assert ps.wait_reply_after(t2, 20) is not None
    finally:
        lab.watchdog.stale_after = 150
        faults.restore_upstream(lab)
        ps.stop()


def test_udp_port_block(lab):
    ps = observe.ProbeStream(lab)
    try:
        t = faults.silent_failure(lab, "wan", udp_port=topology.VPN_PORT)
        assert _no_reply_for(ps, t, 3) == 0
        # only WireGuard's port is blocked: other traffic through ispa passes
        lab.run("router", "ping", "-c", "1", "-W", "2", topology.ISPA_INET)
        assert faults.dropped(lab, "wan") > 0
        # the server's alternate port 443 gets through the block
        cap = observe.Capture(lab)
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", "%s:%d" % (VPN_A, topology.VPN_ALT_PORT))
        t2 = time.time()  # after the change: earlier sends still went to 51820
        assert ps.wait_reply_after(t2, 10) is not None
        time.sleep(0.3)
        cap.stop()
        assert {p["dport"] for p in cap.tunnel_packets(t2 + 0.05)} == {topology.VPN_ALT_PORT}
        t3 = faults.restore_upstream(lab)
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", "%s:%d" % (VPN_A, topology.VPN_PORT))
        assert ps.wait_reply_after(t3, 20) is not None
    finally:
        faults.restore_upstream(lab)
        ps.stop()


# ------------------------------------------------------------ fresh labs


def _events_since(lab, t):
    return [(e["action"], e["interface"], e["device"]) for e in lab.netifd.hotplug_events
            if e["time"] >= t]


def test_carrier_loss_failover_leak_no_failback_nat_reset(fresh_lab):
    """force_link 0 (the lab's default, a dhcp or pppoe WAN): netifd takes
    wan down, tears the tunnel down and sets it up again on wanb by itself,
    in the order and with the events the real one sends."""
    lab = fresh_lab
    wg = lab.router_wg
    # at start every interface got its ifup, with its device
    assert _events_since(lab, 0) == [("ifup", "loopback", "lo"), ("ifup", "lan", "lan"),
                                     ("ifup", "wan", "wan"), ("ifup", "wanb", "wanb"),
                                     ("ifup", wg, wg)]
    assert lab.ip("router", "route", "show", VPN_A).stdout.split() == [
        VPN_A, "via", "10.0.1.1", "dev", "wan", "proto", "static", "metric", "10"]
    cap = observe.Capture(lab)
    ps = replying(lab)
    t = faults.carrier_loss(lab, "wan")
    assert "NO-CARRIER" in lab.ip("router", "link", "show", "wan").stdout
    assert lab.ip("router", "-4", "addr", "show", "dev", "wan").stdout.strip() == ""
    # rebuilt on wanb with no other interface event
    assert ps.wait_reply_after(t, 10) is not None
    assert lab.netifd.settle()
    assert lab.netifd.dep == ("wanb", VPN_A) and lab.netifd.tunnel_up
    assert _events_since(lab, t) == [("ifdown", wg, None), ("ifdown", "wan", None),
                                     ("ifup-failed", wg, None), ("ifup", wg, wg)]
    assert lab.ip("router", "route", "show", VPN_A).stdout.split() == [
        VPN_A, "via", "100.64.2.1", "dev", "wanb", "proto", "static", "metric", "20"]
    texts = [e for _, e in lab.netifd.events]
    assert "Interface 'wan' has link connectivity loss" in texts
    # the gap is real: LAN traffic for the remote subnet left wanb in clear
    time.sleep(0.5)  # the capture file lags a little
    leaks = cap.leaks(t)
    assert leaks and {p["dev"] for p in leaks} == {"wanb"}
    assert {p["dst"] for p in leaks} == {topology.PROBE_TARGET}
    t_up = time.time()
    assert ps.wait_reply_after(t_up, 10) is not None
    time.sleep(0.3)  # the capture file lags the reply a little
    assert cap.tunnel_devices(t_up) == ["wanb"]
    assert lab.vpn_endpoint().startswith(topology.ISPB_PUBLIC[0] + ":")
    # wan returns: its ifup, and stock does not fail back
    t_ret = faults.carrier_return(lab, "wan")
    time.sleep(3)
    assert lab.netifd.settle()
    assert _events_since(lab, t_ret) == [("ifup", "wan", "wan")]
    assert lab.netifd.dep == ("wanb", VPN_A)
    assert observe.route_device(lab, VPN_A) == "wanb"
    assert cap.tunnel_devices(t_ret) == ["wanb"]
    assert ps.replied_between(t_ret, t_ret + 2.5) > 0
    # CGNAT reset: the server now sees the other public address
    faults.nat_reset(lab, "ispb")
    assert lab.ispb_public == topology.ISPB_PUBLIC[1]
    assert lab.wait_for(
        lambda: (lab.vpn_endpoint() or "").startswith(topology.ISPB_PUBLIC[1] + ":"), 10)
    ps.stop()
    cap.stop()
    names = [f[1] for f in lab.faults]
    assert names == ["carrier_loss", "carrier_return", "nat_reset"]
    assert lab.faults[0][0] == t


def test_static_wan_carrier_loss_keeps_stock_on_the_dead_wan(lab_factory):
    """force_link 1 (proto static's default): netifd logs the link loss and
    does nothing else; the routes stay, marked linkdown, the tunnel stays
    pinned to the dead wan until the cable returns."""
    lab = lab_factory(force_link=True)
    lab.start_baseline(watchdog_interval=1, stale_after=5)
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        assert "force_link" not in f.read()
    assert lab.netifd.force_link("wan") and lab.netifd.force_link("wanb")
    cap = observe.Capture(lab)
    ps = observe.ProbeStream(lab)
    try:
        assert ps.wait_reply_after(time.time(), 10) is not None
        t = faults.carrier_loss(lab, "wan")
        assert _no_reply_for(ps, t, 4) == 0
        assert lab.netifd.settle()
        assert _events_since(lab, t) == []
        assert "Interface 'wan' has link connectivity loss" in [e for _, e in lab.netifd.events]
        assert lab.netifd.dep == ("wan", VPN_A) and lab.netifd.tunnel_up
        assert "10.0.1.2/24" in lab.ip("router", "-4", "addr", "show", "dev", "wan").stdout
        routes = lab.ip("router", "route", "show", "dev", "wan").stdout.splitlines()
        assert {"default via 10.0.1.1 proto static metric 10 linkdown",
                "%s via 10.0.1.1 proto static metric 10 linkdown" % VPN_A} <= {
                    r.strip() for r in routes}, routes
        assert observe.route_device(lab, VPN_A) == "wan"
        assert cap.leaks(t) == []  # the tunnel's routes never went away
        # the cable returns: no hotplug event (IFEV_LINK_UP has none), it works again
        t_ret = faults.carrier_return(lab, "wan")
        assert ps.wait_reply_after(t_ret, 10) is not None
        assert lab.netifd.settle()
        assert _events_since(lab, t) == []
        assert "linkdown" not in lab.ip("router", "route", "show", "dev", "wan").stdout
    finally:
        ps.stop()
        cap.stop()


def test_flapping(fresh_lab):
    lab = fresh_lab
    ps = replying(lab)
    fl = faults.flap(lab, "wan", period=0.7, duration=4)
    fl.join(30)
    kinds = [k for _, k in fl.transitions]
    assert len(kinds) >= 4 and kinds[0] == "down" and kinds[-1] == "up"
    assert all(a != b for a, b in zip(kinds, kinds[1:]))
    assert lab.netifd.settle()
    texts = [e for _, e in lab.netifd.events]
    # the first loss moved the tunnel to wanb; wan's later flaps do not concern it
    assert sum("tear down" in e for e in texts) == 1
    assert sum(e.startswith("setup") for e in texts) == 2
    assert lab.netifd.dep == ("wanb", VPN_A)
    assert ps.wait_reply_after(time.time(), 15) is not None
    ps.stop()


def test_both_down_then_one_back(fresh_lab):
    lab = fresh_lab
    ps = replying(lab)
    t = faults.both_down(lab)
    assert lab.netifd.up == set()
    assert lab.ip("router", "route", "show", "default").stdout.strip() == ""
    assert _no_reply_for(ps, t, 1.5) == 0
    # torn down; its setup waits (wg retries the name while no DNS answers)
    assert not lab.netifd.tunnel_up
    r = lab.run("router", "ping", "-c", "1", "-W", "1", topology.DNS_SERVER, check=False)
    assert r.returncode != 0
    t2 = faults.carrier_return(lab, "wanb")
    assert ps.wait_reply_after(t2, 10) is not None
    assert lab.netifd.settle()
    assert lab.netifd.dep == ("wanb", VPN_A)
    ps.stop()


def test_hotplug_and_wgrouter_mode(lab_factory, tmp_path):
    lab = lab_factory()
    hp = tmp_path / "hotplug"
    hp.mkdir()
    (hp / "10-record").write_text(
        'echo "$ACTION $INTERFACE ${DEVICE:-none} $WGROUTER_ROOT" >> "$WGROUTER_ROOT/hotplug.log"\n')
    (hp / "20-second").write_text('echo "second $ACTION" >> "$WGROUTER_ROOT/hotplug.log"\n')
    # a stand-in command proves where and how the daemon is started
    script = 'readlink /proc/self/ns/net; echo "args: $*" >&2; exec sleep 60'
    p = lab.start_wgrouter(hotplug_dir=str(hp), cmd=["sh", "-c", script, "wgr"],
                           check_interval=2)
    with open(os.path.join(lab.root, "etc/config/wgrouter")) as f:
        cfg = ucifile.parse(f.read())
    main = [s for s in cfg if s[".type"] == "wgrouter"][0]
    assert main["check_interval"] == "2" and main["failback_holddown"] == "5"
    peer = [s for s in cfg if s[".type"] == "peer"][0]
    assert peer["public_key"] == lab.keys["vpn"]["public"]
    assert peer["endpoint"] == ["vpn.lab.test:443", "192.0.2.11:51820"]
    wans = {s[".name"]: s for s in cfg if s[".type"] == "wan"}
    assert wans["wanb"]["track_ip"] == ["203.0.113.1"] and wans["wan"]["keepalive"] == "25"
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        net = ucifile.parse(f.read())
    assert [s for s in net if s[".name"] == lab.router_wg][0]["nohostroute"] == "1"
    # nohostroute: no pinned /32
    assert lab.netifd.dep is None
    assert observe.tunnel_works(lab, 5)
    faults.carrier_loss(lab, "wan")
    faults.carrier_return(lab, "wan")
    assert lab.netifd.settle()
    # wgrouter mode: WAN events never touch the tunnel
    assert lab.netifd.tunnel_up
    assert lab.ip("router", "link", "show", lab.router_wg, check=False).returncode == 0
    with open(os.path.join(lab.root, "hotplug.log")) as f:
        lines = f.read().splitlines()
    boot = []
    for name, dev in (("loopback", "lo"), ("lan", "lan"), ("wan", "wan"), ("wanb", "wanb"),
                      (lab.router_wg, lab.router_wg)):
        boot += ["ifup %s %s %s" % (name, dev, lab.root), "second ifup"]
    assert lines == boot + ["ifdown wan none %s" % lab.root, "second ifdown",
                            "ifup wan wan %s" % lab.root, "second ifup"]
    assert p.poll() is None
    lab.stop_wgrouter()
    assert p.poll() is not None
    with open(lab.wgrouter_log) as f:
        log = f.read()
    assert "args: wgr" not in log and "args: " in log
    ns_inode = os.readlink("/proc/self/ns/net")
    assert log.splitlines()[0].startswith("net:[") and log.splitlines()[0] != ns_inode


def test_stale_source_after_failover_without_hostroute(lab_factory):
    """nohostroute and nobody acting: the tunnel stays dead after wan goes
    (the peer's cached source address is gone); re-setting the endpoint
    heals it at once.  This is the fault wgrouter exists to repair."""
    lab = lab_factory()
    if lab.wg_backend != "wireguard-go":
        pytest.skip("kernel WireGuard drops a vanished source address itself; "
                    "this stale source is wireguard-go's")
    lab.start_wgrouter(cmd=["sleep", "60"], hotplug_dir=os.devnull)
    cap = observe.Capture(lab)
    ps = replying(lab)
    t = faults.carrier_loss(lab, "wan")
    assert observe.route_device(lab, VPN_A) == "wanb"
    assert _no_reply_for(ps, t, 4) == 0
    assert cap.tunnel_packets(t) == []  # nothing even tried wanb
    t2 = time.time()
    lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
            "endpoint", "%s:%d" % (VPN_A, topology.VPN_PORT))
    assert ps.wait_reply_after(t2, 5) is not None
    time.sleep(0.3)  # the capture file lags the reply a little
    assert cap.tunnel_devices(t2) == ["wanb"]
    ps.stop()
    cap.stop()


def test_mwan3_variant(lab_factory):
    lab = lab_factory(mwan3=True)
    rules = lab.ip("router", "rule", "show").stdout
    for pref, what in (("1001", "iif wan lookup 1"), ("1002", "iif wanb lookup 2"),
                       ("2001", "fwmark 0x100/0x3f00 lookup 1"),
                       ("2002", "fwmark 0x200/0x3f00 lookup 2"),
                       ("3001", "fwmark 0x100/0x3f00 unreachable")):
        assert "%s:\tfrom all %s" % (pref, what) in rules
    assert observe.route_device(lab, topology.ISPB_INET, ns="router") == "wan"  # main table
    r = lab.ip("router", "route", "get", topology.ISPB_INET, "mark", "0x100")
    assert "dev wan " in r.stdout
    r = lab.ip("router", "route", "get", topology.ISPA_INET, "mark", "0x200")
    assert "dev wanb " in r.stdout
    lab.start_baseline(watchdog_interval=1, stale_after=5)
    assert observe.tunnel_works(lab, 5)
    # router-originated WireGuard UDP got the wan mark saved in its connmark
    ct = lab.run("router", "conntrack", "-L", "-p", "udp", "--dport", str(topology.VPN_PORT),
                 check=False).stdout
    assert "mark=256" in ct
    # ifdown removes the table route too and the policy fails over to wanb
    faults.carrier_loss(lab, "wan")
    assert lab.ip("router", "route", "show", "table", "1").stdout.strip() == ""
    assert lab.mwan3_members == ["wanb"]
    assert lab.resolve("vpn", ns="router") == [VPN_A]  # new flows go out wanb
    faults.carrier_return(lab, "wan")
    assert lab.mwan3_members == ["wan", "wanb"]
    assert "default via 10.0.1.1" in lab.ip("router", "route", "show", "table", "1").stdout


# ------------------------------------------------------------ isolation and cleanup


def test_two_labs_at_once():
    require_lab()
    with topology.Lab() as a, topology.Lab() as b:
        assert a.prefix != b.prefix and a.router_wg != b.router_wg
        a.start_baseline(watchdog_interval=1, stale_after=5)
        b.start_baseline(watchdog_interval=1, stale_after=5)
        assert observe.tunnel_works(a, 5) and observe.tunnel_works(b, 5)
        faults.carrier_loss(a, "wan")
        assert a.netifd.settle()
        # a's fault does not touch b
        assert "NO-CARRIER" not in b.ip("router", "link", "show", "wan").stdout
        assert observe.tunnel_works(b, 5)
        assert a.netifd.dep[0] == "wanb" and b.netifd.dep[0] == "wan"
    assert cleanup.leftovers(a.prefix) == []
    assert cleanup.leftovers(b.prefix) == []


def test_exit_leaves_nothing_even_on_error():
    require_lab()
    with pytest.raises(RuntimeError):
        with topology.Lab() as lab:
            lab.start_baseline(watchdog_interval=1, stale_after=5)
            ps = observe.ProbeStream(lab)
            cap = observe.Capture(lab)
            lab.start_wgrouter(cmd=["sleep", "60"])
            assert cleanup.leftovers(lab.prefix)
            pids = [p.pid for p in lab.procs]
            raise RuntimeError("boom")
    assert cleanup.leftovers(lab.prefix) == []
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().split()[2] == "Z"
    assert ps.proc.poll() is not None and all(p.poll() is not None for p in cap.procs.values())


def test_cleanup_removes_a_killed_lab():
    require_lab()
    code = ("import sys, time\n"
            "from tests.lab.topology import Lab\n"
            "lab = Lab().__enter__()\n"
            "lab.start_baseline()\n"
            "print(lab.prefix, flush=True)\n"
            "time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=topology.REPO, stdout=subprocess.PIPE,
                         text=True)
    try:
        prefix = p.stdout.readline().strip()
        assert prefix.startswith("t%d" % p.pid)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    left = cleanup.leftovers(prefix)
    assert any(x.endswith("-router") for x in left)
    if topology.Lab(prefix=prefix).wg_backend == "wireguard-go":
        assert any(x.startswith("pid ") for x in left)  # wireguard-go outlives its parent
    assert prefix in cleanup.dead_prefixes()
    assert prefix in cleanup.cleanup_dead()
    assert cleanup.leftovers(prefix) == []


# ------------------------------------------------------------ the IPv6 variant

VPN6_A, VPN6_B = topology.VPN_ADDRESSES6

_AAAA_PY = r"""
import sys
import dns.message, dns.query, dns.rdatatype
q = dns.message.make_query(sys.argv[1], sys.argv[3])
r = dns.query.udp(q, sys.argv[2], timeout=2)
print(" ".join(sorted(rr.to_text() for rrset in r.answer for rr in rrset
                      if rrset.rdtype == dns.rdatatype.from_text(sys.argv[3]))))
"""


def _dns_query(lab, name, rtype, ns="router"):
    """dnspython query from ``ns`` straight to the lab's DNS server."""
    r = lab.run(ns, sys.executable, "-c", _AAAA_PY, name, topology.DNS_SERVER, rtype)
    return r.stdout.split()


def _global6(lab, ns, dev):
    return lab.ip(ns, "-6", "addr", "show", "dev", dev, "scope", "global").stdout.strip()


def _ping6(lab, target, ns="router"):
    return lab.run(ns, "ping", "-6", "-n", "-c", "1", "-W", "2", target,
                   check=False).returncode == 0


def test_default_lab_has_no_ipv6(lab):
    assert lab.ipv6_wans == ()
    for dev in ("wan", "wanb"):
        assert _global6(lab, "router", dev) == ""
    assert lab.ip("router", "-6", "route", "show", "default").stdout.strip() == ""
    assert lab.run("vpn", "nft", "list", "table", "ip6", "vpn6", check=False).returncode != 0
    assert lab.dns_records6 == {}
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        assert "ip6addr" not in f.read()


def test_ipv6_routed_through_both_wans(lab_factory):
    lab = lab_factory(ipv6=True)
    assert lab.ipv6_wans == ("wan", "wanb")
    assert lab.notes["router_accept_ra_0"] is True
    for name, w in topology.WANS.items():
        assert "inet6 %s scope global" % w["address6"] in _global6(lab, "router", w["device"])
    defaults = lab.ip("router", "-6", "route", "show", "default").stdout
    assert "default via 2001:db8:1::1 dev wan proto static metric 10 " in defaults
    assert "default via 2001:db8:2::1 dev wanb proto static metric 20 " in defaults
    for ns in ("ispa", "ispb", "inet"):
        r = lab.run(ns, "cat", "/proc/sys/net/ipv6/conf/all/forwarding")
        assert r.stdout.strip() == "1"
    # both server addresses, usable at once (no DAD)
    vpn6 = lab.ip("vpn", "-6", "addr", "show", "dev", "inet").stdout
    assert VPN6_A + "/64" in vpn6 and VPN6_B + "/64" in vpn6 and "tentative" not in vpn6
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        net = {s[".name"]: s for s in ucifile.parse(f.read())}
    assert net["wan"]["ip6addr"] == "2001:db8:1::2/64" and net["wanb"]["ip6gw"] == "2001:db8:2::1"
    cap = observe.Capture(lab)
    try:
        t = time.time()
        assert _ping6(lab, VPN6_A)
        assert observe.route_device(lab, VPN6_A) == "wan"

        def echo(since):
            return [p for p in cap.packets(since)
                    if p["family"] == 6 and p["proto"] == 58 and p["dst"] == VPN6_A]

        assert lab.wait_for(lambda: echo(t), 3)
        assert {p["dev"] for p in echo(t)} == {"wan"}
        # routed, not NATed: the server sees the router's own address
        assert {p["src"] for p in echo(t)} == {"2001:db8:1::2"}
        lab.ip("router", "-6", "route", "replace", VPN6_A + "/128", "via",
               topology.WANS["wanb"]["gateway6"], "dev", "wanb")
        assert observe.route_device(lab, VPN6_A) == "wanb"
        t2 = time.time()
        assert _ping6(lab, VPN6_A)
        assert lab.wait_for(lambda: echo(t2), 3)
        assert {p["dev"] for p in echo(t2)} == {"wanb"}
        assert {p["src"] for p in echo(t2)} == {"2001:db8:2::2"}
    finally:
        cap.stop()
    # AAAA: vpn6.lab.test has only AAAA, vpn.lab.test only A (as in the v4 lab)
    assert _dns_query(lab, "vpn6.lab.test", "AAAA") == [VPN6_A]
    assert _dns_query(lab, "vpn6.lab.test", "A") == []
    assert _dns_query(lab, "vpn.lab.test", "AAAA") == []
    assert _dns_query(lab, "vpn.lab.test", "A") == [VPN_A]
    assert lab.resolve6("vpn6", ns="router") == [VPN6_A]
    assert lab.resolve6("vpn", ns="router") == []
    # publishing AAAA at run time: set_dns with a v6 address, set_dns6 with a list
    lab.set_dns("vpn", VPN6_B)
    assert lab.wait_for(lambda: _dns_query(lab, "vpn.lab.test", "AAAA") == [VPN6_B], 5)
    assert _dns_query(lab, "vpn.lab.test", "A") == [VPN_A]
    lab.set_dns6("vpn6", [VPN6_A, VPN6_B])
    assert lab.wait_for(lambda: _dns_query(lab, "vpn6.lab.test", "AAAA") == [VPN6_A, VPN6_B], 5)
    lab.set_dns6("vpn", None)
    assert lab.wait_for(lambda: lab.resolve6("vpn") == [], 5)


def test_ipv6_tunnel_literal_endpoint_faults(lab_factory):
    """A tunnel to [VPN_ADDRESSES6[0]]:51820: carries the probe over wan;
    carrier loss and a re-set endpoint move it to wanb; a silent failure
    drops the v6 tunnel too."""
    lab = lab_factory(ipv6=True)
    lab.start_wgrouter(cmd=["sleep", "120"], hotplug_dir=os.devnull, endpoint_host=VPN6_A)
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        peer = [s for s in ucifile.parse(f.read()) if s[".type"] == "wireguard_" + lab.router_wg]
    assert peer[0]["endpoint_host"] == VPN6_A  # unbracketed in UCI, as on OpenWrt
    r = lab.run("router", "wg", "show", lab.router_wg, "endpoints")
    assert r.stdout.split("\t")[1].strip() == "[%s]:%d" % (VPN6_A, topology.VPN_PORT)
    cap = observe.Capture(lab)
    ps = observe.ProbeStream(lab)
    try:
        t = time.time()
        assert observe.tunnel_works(lab, 10)
        assert ps.wait_reply_after(t, 10) is not None
        assert lab.wait_for(lambda: cap.tunnel_wan(t, family=6) == "wan", 3)
        assert cap.tunnel_devices(t) == ["wan"]
        assert {p["family"] for p in cap.tunnel_packets(t)} == {6}
        assert {p["dst"] for p in cap.tunnel_packets(t)} == {VPN6_A}
        assert cap.leaks(t) == []
        # the server answered on its v6 address and sees the router's own one
        assert lab.vpn_endpoint().startswith("[2001:db8:1::2]:")
        # carrier loss: netifd drops wan's v6 too
        faults.carrier_loss(lab, "wan")
        assert _global6(lab, "router", "wan") == ""
        assert "dev wan " not in lab.ip("router", "-6", "route", "show", "default").stdout
        assert observe.route_device(lab, VPN6_A) == "wanb"
        t2 = time.time()
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", topology.endpoint_text(VPN6_A, topology.VPN_PORT))
        assert ps.wait_reply_after(t2, 10) is not None
        assert lab.wait_for(lambda: cap.tunnel_wan(t2) == "wanb", 3)
        assert lab.wait_for(lambda: (lab.vpn_endpoint() or "").startswith("[2001:db8:2::2]:"), 5)
        # silent failure on wanb: v6 is dropped as well
        t3 = faults.silent_failure(lab, "wanb")
        assert _no_reply_for(ps, t3, 2) == 0
        assert faults.dropped(lab, "wanb") > 0
        assert not _ping6(lab, VPN6_A)
        t4 = faults.restore_upstream(lab, "wanb")
        assert ps.wait_reply_after(t4, 20) is not None
        # carrier return restores wan's v6 (address usable at once, default route)
        faults.carrier_return(lab, "wan")
        assert "inet6 2001:db8:1::2/64 scope global" in _global6(lab, "router", "wan")
        assert "2001:db8:1::1/64" in _global6(lab, "ispa", "cpe")
        lab.ip("router", "-6", "route", "replace", VPN6_A + "/128", "via",
               topology.WANS["wan"]["gateway6"], "dev", "wan")
        assert _ping6(lab, VPN6_A)
        t5 = time.time()
        lab.run("router", "wg", "set", lab.router_wg, "peer", lab.keys["vpn"]["public"],
                "endpoint", topology.endpoint_text(VPN6_A, topology.VPN_PORT))
        assert ps.wait_reply_after(t5, 10) is not None
        assert lab.wait_for(lambda: cap.tunnel_wan(t5, family=6) == "wan", 3)
    finally:
        faults.restore_upstream(lab, "wanb")
        ps.stop()
        cap.stop()


def test_ipv6_stock_host_dependency_by_name(lab_factory):
    """Stock netifd with endpoint_host vpn6.lab.test (AAAA only): the host
    dependency is a /128 pinned to wan, moved to wanb by the rebuild."""
    lab = lab_factory(ipv6=True)
    lab.start_baseline(watchdog_interval=1, stale_after=5, endpoint_host="vpn6.lab.test")
    assert lab.netifd.dep == ("wan", VPN6_A)
    routes = lab.ip("router", "-6", "route", "show", VPN6_A + "/128").stdout
    assert "via 2001:db8:1::1 dev wan proto static metric 10" in routes
    assert observe.tunnel_works(lab, 10)
    # the tunnel carries the LAN's IPv6 as well (ULA to the remote side)
    assert observe.tunnel_works(lab, 10, target=topology.PROBE_TARGET6)
    cap = observe.Capture(lab)
    ps6 = observe.ProbeStream(lab, target=topology.PROBE_TARGET6)
    try:
        assert ps6.wait_reply_after(time.time(), 10) is not None
        t = faults.carrier_loss(lab, "wan")
        assert ps6.wait_reply_after(t, 10) is not None
        assert lab.netifd.settle()
        assert lab.netifd.dep == ("wanb", VPN6_A)
        assert "via 2001:db8:2::1 dev wanb proto static metric 20" in lab.ip(
            "router", "-6", "route", "show", VPN6_A + "/128").stdout
        # stock's gap leaks IPv6 too: the LAN's packets for the remote
        # subnet follow the v6 default route out of wanb, in clear
        assert lab.wait_for(lambda: cap.leaks(t), 3)
        leaks = cap.leaks(t)
        assert {(p["dev"], p["family"], p["dst"]) for p in leaks} == {
            ("wanb", 6, topology.PROBE_TARGET6)}, leaks
    finally:
        ps6.stop()
        cap.stop()
    assert observe.tunnel_works(lab, 10)
    assert lab.vpn_endpoint().startswith("[2001:db8:2::2]:")
    # a faulty v6 server address: vpn_address_down/up work on the ip6 table
    faults.vpn_address_down(lab, VPN6_A)
    assert not observe.tunnel_works(lab, 2)
    assert _ping6(lab, VPN6_A)  # only UDP to that address is dropped
    faults.vpn_address_up(lab)
    assert "drop" not in lab.run("vpn", "nft", "list", "chain", "ip6", "vpn6", "faults").stdout
    assert observe.tunnel_works(lab, 10)


def test_ipv6_on_one_wan_only_and_mwan3(lab_factory):
    lab = lab_factory(ipv6=("wan",), mwan3=True)
    assert lab.ipv6_wans == ("wan",)
    assert _global6(lab, "router", "wanb") == "" and _global6(lab, "ispb", "cpe") == ""
    defaults = lab.ip("router", "-6", "route", "show", "default").stdout
    assert "dev wan " in defaults and "wanb" not in defaults
    # mwan3's wan6 is an interface of its own: id 3, table 3, mark 0x300
    # (an IPv6 table that never had a route does not even exist)
    for table in ("1", "2", "4"):
        assert lab.ip("router", "-6", "route", "show", "table", table, check=False).stdout.strip() == ""
    assert "dev wan " in lab.ip("router", "-6", "route", "show", "table", "3").stdout
    rules = lab.ip("router", "-6", "rule", "show").stdout
    assert "1003:\tfrom all iif wan lookup 3" in rules and "iif wanb" not in rules
    assert "2003:\tfrom all fwmark 0x300/0x3f00 lookup 3" in rules, rules
    with open(os.path.join(lab.root, "etc/config/network")) as f:
        net = {s[".name"]: s for s in ucifile.parse(f.read())}
    assert "ip6addr" in net["wan"] and "ip6addr" not in net["wanb"]
    assert lab.mwan3_members6 == ["wan"]
    assert _ping6(lab, VPN6_A)
    assert observe.route_device(lab, VPN6_A) == "wan"
    faults.carrier_loss(lab, "wan")
    # no v6 uplink left: v6 is unreachable, v4 fails over as always
    assert lab.ip("router", "-6", "route", "show", "default").stdout.strip() == ""
    assert lab.ip("router", "-6", "route", "show", "table", "3", check=False).stdout.strip() == ""
    assert lab.mwan3_members6 == [] and lab.mwan3_members == ["wanb"]
    assert not _ping6(lab, VPN6_A)
    assert lab.run("router", "ping", "-c", "1", "-W", "2", VPN_A, check=False).returncode == 0
    faults.carrier_return(lab, "wan")
    assert lab.mwan3_members6 == ["wan"]
    assert _ping6(lab, VPN6_A)
