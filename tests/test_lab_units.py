"""The lab's pure helpers, without root: UCI files, pcap parsing, probe math."""

import struct
import threading

from tests.lab import baseline
from tests.lab import cleanup
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
