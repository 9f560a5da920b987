"""The lab's pure helpers, without root: UCI files, pcap parsing, probe math, the
netifd stand-in's queue and the lab's ubus stand-in (bus and binding)."""

import ipaddress
import struct
import threading

from tests.lab import baseline
from tests.lab import cleanup
from tests.lab import netifd
from tests.lab import observe
from tests.lab import topology
from tests.lab import ucifile


def test_uci_render_parse_roundtrip():
    text = ucifile.render([
        ("interface", "wg0", [("proto", "wireguard"), ("addresses", ["10.0.0.2/24"])]),
        ("wireguard_wg0", None, [("public_key", "abc="), ("allowed_ips", ["a", "b"])]),
    ])
    assert "config interface 'wg0'\n\toption proto 'wireguard'\n" in text
    assert "\tlist allowed_ips 'a'\n\tlist allowed_ips 'b'" in text
    s = ucifile.parse(text)
    assert s[0] == {".type": "interface", ".name": "wg0", "proto": "wireguard",
                    "addresses": ["10.0.0.2/24"]}
    assert s[1][".name"] is None and s[1]["allowed_ips"] == ["a", "b"]


def test_uci_parse_quotes_and_comments():
    s = ucifile.parse('# x\nconfig peer\n\toption host "vpn.lab.test" # c\n\toption port 443\n')
    assert s == [{".type": "peer", ".name": None, "host": "vpn.lab.test", "port": "443"}]


def _frame(src, dst, proto=17, sport=1000, dport=51820):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, proto, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return b"\x00" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8, 0)


def _pcap(path, packets, truncate=0):
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for t, frame in packets:
        data += struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame
    with open(path, "wb") as f:
        f.write(data[:len(data) - truncate])


def test_read_pcap_and_capture_queries(tmp_path):
    wan, wanb = tmp_path / "wan.pcap", tmp_path / "wanb.pcap"
    _pcap(wan, [(10.5, _frame("10.0.1.2", "192.0.2.10")),
                (11.0, _frame("10.0.1.2", "10.99.0.1", proto=1))])
    # a half-written last record (tcpdump still writing) is ignored
    _pcap(wanb, [(12.0, _frame("100.64.2.2", "192.0.2.11", dport=443)),
                 (13.0, _frame("100.64.2.2", "10.99.0.7"))], truncate=5)
    cap = observe.Capture.__new__(observe.Capture)
    cap.files = {"wan": str(wan), "wanb": str(wanb)}
    pk = cap.packets()
    assert [(p["dev"], p["dst"]) for p in pk] == [("wan", "192.0.2.10"), ("wan", "10.99.0.1"),
                                                  ("wanb", "192.0.2.11")]
    assert pk[0]["time"] == 10.5 and pk[0]["dport"] == 51820 and pk[1]["proto"] == 1
    assert [p["dst"] for p in cap.leaks()] == ["10.99.0.1"]
    assert cap.tunnel_devices() == ["wan", "wanb"]
    assert cap.tunnel_wan() == "wanb"
    assert cap.tunnel_wan(since=11.5) == "wanb" and cap.tunnel_devices(since=11.5) == ["wanb"]


def _stream(sends, replies):
    ps = observe.ProbeStream.__new__(observe.ProbeStream)
    ps._lock = threading.Lock()
    ps.sends, ps.replies, ps.interval = sends, replies, 0.02
    return ps


def test_probe_math():
    sends = {n: 100 + n * 0.1 for n in range(100)}  # 100.0 .. 109.9
    lost = set(range(20, 45))  # 102.0 .. 104.4 unanswered
    replies = {n: t + 0.01 for n, t in sends.items() if n not in lost}
    ps = _stream(sends, replies)
    assert abs(ps.outage() - 2.5) < 1e-6
    assert abs(ps.first_reply_after(102.0) - 2.51) < 1e-6
    assert ps.replied_between(102.0, 104.5) == 0
    assert ps.sent_between(102.0, 104.5) == 25
    assert ps.first_reply_after(200) is None
    assert ps.outage(since=105) == 0.0


def test_probe_outage_still_running():
    sends = {n: float(n) for n in range(10)}
    ps = _stream(sends, {0: 0.1, 1: 1.1})
    assert ps.outage(settle=1.0) == 6.0  # from 2.0 to last send minus settle


def test_watchdog_skips_ip_literals():
    assert baseline._is_ip("192.0.2.10") and baseline._is_ip("[2001:db8::1]")
    assert not baseline._is_ip("vpn.lab.test")


def test_prefixes_and_names():
    p = topology.new_prefix()
    q = topology.new_prefix()
    assert p != q and p.startswith("t") and topology._letters(27) == "bb"
    m = cleanup.PREFIX_RE.match(p + "-router")
    assert m and m.group(1) == p
    assert not cleanup.PREFIX_RE.match(p + "-other")
    lab = topology.Lab(prefix="t4194304zz")
    assert lab.router_wg == "wg4194304zzr" and len(lab.router_wg) <= 15
    assert lab.ns("ispb") == "t4194304zz-ispb"
    assert topology._netmask(24) == "255.255.255.0" and topology._netmask(10) == "255.192.0.0"


def test_can_run_says_why_not_without_root(monkeypatch):
    monkeypatch.setattr(topology.os, "geteuid", lambda: 1000)
    assert "root" in topology.can_run()


# ------------------------------------------------------------ the IPv6 variant

def _frame6(src, dst, nh=17, sport=1000, dport=51820, ext=b"", ext_type=0, cooked=False):
    """An IPv6 frame; with ``ext`` (an extension header of type ``ext_type``
    whose own next-header byte says what follows) before the transport header."""
    payload = ext + (struct.pack("!HHHH", sport, dport, 8, 0) if nh in (6, 17) else b"")
    first_nh = ext_type if ext else nh
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(payload), first_nh, 64,
                     ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    if cooked:
        return b"\x00" * 14 + b"\x86\xdd" + ip + payload
    return b"\x00" * 12 + b"\x86\xdd" + ip + payload


def test_parse_ipv6_frames():
    f = _frame6("2001:db8:1::2", "2001:db8:100::10", dport=443)
    assert observe.parse_ipv6(1, f) == ("2001:db8:1::2", "2001:db8:100::10", 17, 1000, 443)
    assert observe.parse_ipv4(1, f) is None
    assert observe.parse_ip(1, f) == (6, ("2001:db8:1::2", "2001:db8:100::10", 17, 1000, 443))
    # Linux cooked capture and raw IP
    c = _frame6("2001:db8:2::2", "2001:db8:100::11", cooked=True)
    assert observe.parse_ipv6(113, c)[:2] == ("2001:db8:2::2", "2001:db8:100::11")
    assert observe.parse_ipv6(101, f[14:])[4] == 443
    # a hop-by-hop header (8 bytes, next header UDP) is skipped to the ports
    hbh = bytes([17, 0]) + b"\x00" * 6
    h = _frame6("2001:db8:1::2", "2001:db8:100::10", ext=hbh, dport=51820)
    assert observe.parse_ipv6(1, h) == ("2001:db8:1::2", "2001:db8:100::10", 17, 1000, 51820)
    # a non-first fragment has no ports
    frag = bytes([17, 0]) + struct.pack("!HI", 185 << 3, 7)
    g = _frame6("2001:db8:1::2", "2001:db8:100::10", ext=frag, ext_type=44)
    assert observe.parse_ipv6(1, g) == ("2001:db8:1::2", "2001:db8:100::10", 17, None, None)
    # ICMPv6 (neighbour discovery, echo): no ports
    n = _frame6("fe80::1", "ff02::1:ff00:1", nh=58)
    assert observe.parse_ipv6(1, n) == ("fe80::1", "ff02::1:ff00:1", 58, None, None)
    # an IPv4 frame is not IPv6, a truncated one is nothing
    v4 = _frame("10.0.1.2", "192.0.2.10")
    assert observe.parse_ipv6(1, v4) is None and observe.parse_ip(1, v4)[0] == 4
    assert observe.parse_ipv6(1, f[:14 + 39]) is None


def test_capture_sees_ipv6_tunnel_packets(tmp_path):
    wan, wanb = tmp_path / "wan.pcap", tmp_path / "wanb.pcap"
    vpn6 = topology.VPN_ADDRESSES6
    _pcap(wan, [(10.0, _frame6("2001:db8:1::2", vpn6[0])),
                (10.5, _frame("10.0.1.2", "192.0.2.10")),
                (11.0, _frame6("2001:db8:1::2", "2001:db8:100::99")),  # not the server
                (11.5, _frame6("2001:db8:1::2", vpn6[0], dport=53)),  # not WireGuard's port
                (12.0, _frame("10.0.1.2", "10.99.0.1", proto=1)),
                (12.5, _frame6("fd00:1::2", "fd00:99::1", nh=58))])  # LAN IPv6 in clear
    _pcap(wanb, [(13.0, _frame6("2001:db8:2::2", vpn6[1], dport=443)),
                 (14.0, _frame("100.64.2.2", "192.0.2.10"))])
    cap = observe.Capture.__new__(observe.Capture)
    cap.files = {"wan": str(wan), "wanb": str(wanb)}
    tp = cap.tunnel_packets()
    assert [(p["time"], p["dev"], p["family"], p["dst"]) for p in tp] == [
        (10.0, "wan", 6, vpn6[0]), (10.5, "wan", 4, "192.0.2.10"), (13.0, "wanb", 6, vpn6[1]),
        (14.0, "wanb", 4, "192.0.2.10")]
    assert cap.tunnel_wan() == "wanb"
    assert cap.tunnel_wan(family=6) == "wanb" and cap.tunnel_wan(since=13.5, family=6) is None
    assert cap.tunnel_devices(family=6) == ["wan", "wanb"]
    assert cap.tunnel_devices(since=12, family=4) == ["wanb"]
    # leaks: LAN traffic to the tunnel's remote subnets, IPv4 and IPv6 alike
    assert [p["dst"] for p in cap.leaks()] == ["10.99.0.1", "fd00:99::1"]
    assert [p["dst"] for p in cap.leaks(networks=[topology.REMOTE_NET])] == ["10.99.0.1"]
    assert len(cap.packets()) == 8


def test_ipv6_lab_arguments_and_helpers():
    assert topology.Lab(prefix="t1a").ipv6_wans == ()
    assert topology.Lab(prefix="t1a", ipv6=True).ipv6_wans == ("wan", "wanb")
    assert topology.Lab(prefix="t1a", ipv6=("wanb", "wan")).ipv6_wans == ("wan", "wanb")
    assert topology.Lab(prefix="t1a", ipv6="wanb").ipv6_wans == ("wanb",)
    try:
        topology.Lab(prefix="t1a", ipv6=("lte",))
    except topology.LabError as e:
        assert "lte" in str(e)
    else:
        raise AssertionError("an unknown WAN was accepted")
    assert topology.wan6_net("wan") == "2001:db8:1::/64"
    assert topology.wan6_net("wanb") == "2001:db8:2::/64"
    for w in topology.WANS.values():
        assert topology.is_ipv6(w["address6"]) and not topology.is_ipv6(w["address"])
    assert topology.endpoint_text("2001:db8:100::10", 51820) == "[2001:db8:100::10]:51820"
    assert topology.endpoint_text("[2001:db8::1]", 443) == "[2001:db8::1]:443"
    assert topology.endpoint_text("vpn.lab.test", "51820") == "vpn.lab.test:51820"
    assert netifd._host("2001:db8:100::10") == "2001:db8:100::10/128"
    assert netifd._host("192.0.2.10") == "192.0.2.10/32"


class _Signals:
    def __init__(self):
        self.sent = []

    def send_signal(self, sig):
        self.sent.append(sig)


def test_dns_records_aaaa(tmp_path):
    lab = topology.Lab(prefix="t1a", ipv6=True)
    lab.hosts_file = str(tmp_path / "hosts")
    lab._dnsmasq = _Signals()
    lab.dns_records = {"vpn": "192.0.2.10"}
    lab.set_dns("vpn6", "2001:db8:100::10")  # a v6 address: AAAA
    lab.set_dns6("vpn", ["2001:db8:100::10", "2001:db8:100::11"])
    lab.set_dns("vpn", "192.0.2.11")  # A changes, AAAA stays
    lines = (tmp_path / "hosts").read_text().splitlines()
    assert lines == ["192.0.2.11 vpn.lab.test", "2001:db8:100::10 vpn.lab.test",
                     "2001:db8:100::11 vpn.lab.test", "2001:db8:100::10 vpn6.lab.test"]
    lab.set_dns6("vpn", [])
    lab.set_dns("vpn6", None)  # no A to remove: nothing changes for vpn6's AAAA
    assert (tmp_path / "hosts").read_text().splitlines() == [
        "192.0.2.11 vpn.lab.test", "2001:db8:100::10 vpn6.lab.test"]
    assert len(lab._dnsmasq.sent) == 5


def test_network_config_ipv6_options(tmp_path):
    lab = topology.Lab(prefix="t1a", ipv6=("wanb",))
    lab.root = str(tmp_path)
    (tmp_path / "etc/config").mkdir(parents=True)
    lab.keys = {"router": {"private": "r="}, "vpn": {"public": "v="}}
    lab.write_network_config(endpoint_host="2001:db8:100::10")
    by = {s[".name"]: s for s in ucifile.parse((tmp_path / "etc/config/network").read_text())}
    assert "ip6addr" not in by["wan"] and "ip6gw" not in by["wan"]
    assert by["wanb"]["ip6addr"] == "2001:db8:2::2/64" and by["wanb"]["ip6gw"] == "2001:db8:2::1"
    assert by["vpn"]["endpoint_host"] == "2001:db8:100::10"
    v4 = topology.Lab(prefix="t1a")
    v4.root, v4.keys = lab.root, lab.keys
    v4.write_network_config()
    assert "ip6" not in (tmp_path / "etc/config/network").read_text()


class _FakeLab:
    """Just what NetifdStandin reads without running a command."""

    router_wg = "wg0"
    ipv6_wans = ()

    def __init__(self, root, network):
        self.root = str(root)
        (root / "etc/config").mkdir(parents=True)
        (root / "etc/config/network").write_text(ucifile.render(network))


def _standin(tmp_path, network=()):
    return netifd.NetifdStandin(_FakeLab(tmp_path, list(network)))


def test_netifd_force_link_follows_the_proto_unless_the_option_says(tmp_path):
    """proto static defaults to force_link 1 (netifd proto-static.c), every
    other proto to 0; the option overrides either (interface.c)."""
    s = _standin(tmp_path, [
        ("interface", "wan", [("proto", "static")]),
        ("interface", "wanb", [("proto", "static"), ("force_link", "0")]),
        ("interface", "lte", [("proto", "dhcp")]),
        ("interface", "dsl", [("proto", "pppoe"), ("force_link", "1")]),
    ])
    try:
        assert [s.force_link(n) for n in ("wan", "wanb", "lte", "dsl", "nosuch")] == [
            True, False, False, True, False]
    finally:
        s.stop()


def test_netifd_hotplug_queue_keeps_one_pending_event_per_interface(tmp_path):
    """interface-event.c interface_queue_event, with the worker held off."""
    s = _standin(tmp_path)
    try:
        with s._cond:
            s._queue_event("wg0", "ifdown")
            s._queue_event("wan", "ifdown")
            s._queue_event("wg0", "ifup-failed")  # replaces wg0's pending ifdown
            s._queue_event("wanb", "ifup")
            s._queue_event("wanb", "ifupdate")  # never replaces a pending ifup
            assert s._queue == ["wg0", "wan", "wanb"]
            assert s._queued == {"wg0": "ifup-failed", "wan": "ifdown", "wanb": "ifup"}
            # while wan's event runs: the same event again is dropped, another queued
            s._queue, s._queued = [], {}
            s._current = ("wan", "ifdown")
            s._queue_event("wan", "ifdown")
            assert s._queue == []
            s._queue_event("wan", "ifupdate")
            s._queue_event("wan", "ifup")
            assert s._queue == ["wan"] and s._queued == {"wan": "ifup"}
            s._queue, s._queued, s._current = [], {}, None
    finally:
        s.stop()


def test_netifd_hotplug_events_run_in_order_device_only_on_ifup(tmp_path):
    s = _standin(tmp_path, [("interface", "lan", [("device", "br-lan"), ("proto", "static")])])
    try:
        s.tunnel_up = True
        with s._cond:  # queued before the first one runs
            for interface, action in (("wg0", "ifdown"), ("wan", "ifdown"), ("lan", "ifup"),
                                      ("wanb", "ifupdate")):
                s._queue_event(interface, action)
        assert s.settle(5)
        assert [(e["action"], e["interface"], e["device"]) for e in s.hotplug_events] == [
            ("ifdown", "wg0", None), ("ifdown", "wan", None), ("ifup", "lan", "br-lan"),
            ("ifupdate", "wanb", "wanb")]
    finally:
        s.stop()


class _StandinBus:
    """tests/lab/standin_bus.py in a process of its own (no lab needed),
    which a test can kill as ubusd is killed."""

    def __init__(self, path):
        import subprocess
        import sys
        from tests.lab import standin_bus
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.lab.standin_bus", path],
                                     cwd=topology.REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "listening"
        self.client = standin_bus.BusProcess(None, path)

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def _standin_ubus():
    """A fresh copy of the binding stand-in (one connection per module)."""
    import importlib.util
    import os
    path = os.path.join(topology.REPO, "tests/lab/standin_ubus/ubus.py")
    spec = importlib.util.spec_from_file_location("standin_ubus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _selects(module):
    """Counts the binding's select() calls: a loop turn is one wait."""
    import select
    import types
    calls = []

    def counted(*args):
        calls.append(args[3])
        return select.select(*args)
    module.select = types.SimpleNamespace(select=counted)
    return calls


STATUS = {"status": {"method": lambda h, data: h.reply({"ok": 1}), "signature": {}}}


def test_standin_ubus_blocks_its_whole_turn_and_serves_calls_meanwhile(tmp_path):
    """loop(timeout) is one blocking wait that a served call does not end
    (python-ubus ``ubus_python_loop``), with no wake-up of its own; the
    objects of a connection are its own, and a name cannot be added twice."""
    import time
    path = str(tmp_path / "ubus.sock")
    bus = _StandinBus(path)
    try:
        ubus = _standin_ubus()
        ubus.connect(socket_path=path)
        ubus.add("wgrouter", STATUS)
        assert "wgrouter" in ubus.objects("wgrouter")
        selects = _selects(ubus)
        t = time.monotonic()
        ubus.loop(800)
        took = time.monotonic() - t
        assert 0.79 <= took < 1.3, took
        assert len(selects) == 1 and 0.7 < selects[0] <= 0.8, selects  # one wait, no tick
        del selects[:]
        answers = []
        caller = threading.Thread(target=lambda: (time.sleep(0.2), answers.append(
            bus.client.call("wgrouter", "status"))))
        caller.start()
        t = time.monotonic()
        ubus.loop(600)
        took = time.monotonic() - t
        caller.join()
        assert 0.59 <= took < 1.5, took
        assert answers and answers[0]["status"] == 0 and answers[0]["replies"] == [{"ok": 1}]
        assert len(selects) <= 3, selects  # the call, then the rest of the turn
        other = _standin_ubus()
        other.connect(socket_path=path)
        try:
            other.add("wgrouter", {})
            raise AssertionError("a second add of a name on the bus must fail")
        except RuntimeError as e:
            assert "Invalid argument" in str(e)
        ubus.disconnect()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "wgrouter" in other.objects("wgrouter"):
            time.sleep(0.01)
        assert "wgrouter" not in other.objects("wgrouter")  # gone with its connection
        other.disconnect()
    finally:
        bus.kill()


def test_standin_ubus_checks_arguments_and_matches_as_ubusd(tmp_path):
    """The signature is strict (tests/ubusrules.py); paths and event patterns
    match as ubusd's (a name, or a prefix with a trailing ``*``), each
    matching pattern gets the event, and the sender gets none of its own
    (all as seen with the real ubusd and python-ubus 0.1.3)."""
    import pytest
    path = str(tmp_path / "ubus.sock")
    bus = _StandinBus(path)
    try:
        ubus = _standin_ubus()
        ubus.connect(socket_path=path)
        called = []
        ubus.add("wgrouter", {"switch": {"method": lambda h, d: called.append(d),
                                         "signature": {"wan": ubus.BLOBMSG_TYPE_STRING}}})
        for args in ({}, {"wan": 5}, {"wan": "wan", "x": 1}):
            answer = [None]
            caller = threading.Thread(target=lambda: answer.__setitem__(
                0, bus.client.call("wgrouter", "switch", args)))
            caller.start()
            while caller.is_alive():
                ubus.loop(50)
            assert answer[0]["status"] == 2, (args, answer)
        assert called == []
        assert list(ubus.objects("wgr*")) == ["wgrouter"]
        assert ubus.objects("wgr") == {} and ubus.objects("*rou*") == {}
        got = []
        ubus.listen(("wgrouter.*", lambda e, d: got.append(("prefix", e))),
                    ("wgrouter.state", lambda e, d: got.append(("exact", e))),
                    ("wgrouter", lambda e, d: got.append(("name", e))))
        sender = _standin_ubus()
        sender.connect(socket_path=path)
        assert ubus.send("wgrouter.state", {"a": 0}) is True  # not looped back
        assert sender.send("wgrouter.state", {"a": 1}) is True
        ubus.loop(200)
        assert sorted(got) == [("exact", "wgrouter.state"), ("prefix", "wgrouter.state")]
        ubus.loop(True)  # the binding parses "|i": a bool is an int, a float is not
        with pytest.raises(TypeError):
            ubus.loop(1.5)
        sender.disconnect()
        ubus.disconnect()
    finally:
        bus.kill()


def test_standin_ubus_after_ubusd_went_away(tmp_path):
    """As observed with python-ubus 0.1.3: loop() still takes its whole
    timeout, send() gives False, objects() raises, get_connected() stays."""
    import time

    import pytest
    path = str(tmp_path / "ubus.sock")
    bus = _StandinBus(path)
    ubus = _standin_ubus()
    ubus.connect(socket_path=path)
    ubus.add("wgrouter", STATUS)
    bus.kill()
    for _ in range(2):  # ubusd went away during the first turn, and between the two
        t = time.monotonic()
        ubus.loop(300)
        assert 0.29 <= time.monotonic() - t < 0.8
    assert ubus.send("wgrouter.state", {}) is False
    with pytest.raises(RuntimeError, match="Invalid argument"):
        ubus.objects("wgrouter")
    assert ubus.get_connected()
    ubus.disconnect()
    with pytest.raises(IOError):  # the socket file is left, nobody listens
        ubus.connect(socket_path=path)


def test_standin_ubus_connect_needs_the_hello(tmp_path):
    """libubus reads ubusd's HELLO first and gives up on anything else
    (libubus-io.c, ubus_reconnect)."""
    import socket

    import pytest
    path = str(tmp_path / "ubus.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def not_ubusd():
        conn, _ = srv.accept()
        conn.sendall(b'{"op": "done", "id": 1}\n')
        conn.close()
    threading.Thread(target=not_ubusd, daemon=True).start()
    with pytest.raises(IOError):
        _standin_ubus().connect(socket_path=path)
    srv.close()
