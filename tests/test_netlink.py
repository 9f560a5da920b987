import socket
import struct

import pytest

from tests.fakerunner import NetNS, netns_unavailable
from wgrouter import netlink


def rta(atype, value):
    length = 4 + len(value)
    return struct.pack("=HH", length, atype) + value + b"\0" * ((4 - length % 4) % 4)


def nlmsg(mtype, payload, seq=1, flags=netlink.NLM_F_MULTI):
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, mtype, flags, seq, 0) + payload + b"\0" * ((4 - length % 4) % 4)


def link_payload(index, name, flags, operstate, carrier=None):
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0)
    body += rta(netlink.IFLA_IFNAME, name.encode() + b"\0")
    body += rta(netlink.IFLA_OPERSTATE, bytes([operstate]))
    if carrier is not None:
        body += rta(netlink.IFLA_CARRIER, bytes([carrier]))
    body += rta(netlink.IFLA_LINKINFO | 0x8000, rta(netlink.IFLA_INFO_KIND, b"veth\0"))
    return body


def test_messages_split_and_align():
    # odd-length names force padding between attributes and messages
    data = nlmsg(netlink.RTM_NEWLINK, link_payload(7, "wan", 0x11043, 6, 1)) + nlmsg(
        netlink.RTM_NEWLINK, link_payload(8, "pppoe-wanb", 0x10091, 0)
    ) + nlmsg(netlink.NLMSG_DONE, b"\0\0\0\0")
    msgs = list(netlink.messages(data))
    assert [m[0] for m in msgs] == [netlink.RTM_NEWLINK, netlink.RTM_NEWLINK, netlink.NLMSG_DONE]
    first = netlink.parse_link(msgs[0][3])
    assert first["ifindex"] == 7 and first["ifname"] == "wan" and first["operstate"] == "UP"
    assert first["up"] and first["lower_up"] and first["carrier"] and first["kind"] == "veth"
    second = netlink.parse_link(msgs[1][3])
    assert second["ifname"] == "pppoe-wanb" and second["operstate"] == "UNKNOWN"
    assert second["pointopoint"] and second["lower_up"] and second["carrier"]


def test_messages_ignores_truncated_tail():
    data = nlmsg(netlink.RTM_NEWLINK, link_payload(7, "wan", 1, 6))
    assert len(list(netlink.messages(data + data[:20]))) == 1


def test_parse_addr_point_to_point():
    body = struct.pack("=BBBBi", socket.AF_INET, 32, 0, 0, 9)
    body += rta(netlink.IFA_ADDRESS, socket.inet_aton("10.64.0.1"))
    body += rta(netlink.IFA_LOCAL, socket.inet_aton("100.64.3.4"))
    body += rta(netlink.IFA_LABEL, b"wwan0\0")
    addr = netlink.parse_addr(body)
    assert addr == {"family": socket.AF_INET, "ifindex": 9, "address": "100.64.3.4", "peer": "10.64.0.1",
                    "prefixlen": 32, "scope": 0, "flags": 0, "label": "wwan0"}


def test_parse_addr_flags_from_ifa_flags_attribute():
    body = struct.pack("=BBBBi", socket.AF_INET6, 64, netlink.IFA_F_TENTATIVE, 0, 4)
    body += rta(netlink.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "2001:db8:1::2"))
    assert netlink.parse_addr(body)["flags"] == netlink.IFA_F_TENTATIVE
    # the u32 attribute, when present, is the whole truth (the 8-bit field is truncated)
    body += rta(netlink.IFA_FLAGS, struct.pack("=I", 0x200 | netlink.IFA_F_DADFAILED))
    addr = netlink.parse_addr(body)
    assert (addr["address"], addr["flags"]) == ("2001:db8:1::2", 0x200 | netlink.IFA_F_DADFAILED)


def test_parse_route_big_table_and_multipath():
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 252, 4, 0, 1, 0)
    body += rta(netlink.RTA_TABLE, struct.pack("=I", 1000))
    body += rta(netlink.RTA_PRIORITY, struct.pack("=I", 20))
    hop1 = rta(netlink.RTA_GATEWAY, socket.inet_aton("10.1.0.1"))
    hop2 = rta(netlink.RTA_GATEWAY, socket.inet_aton("10.2.0.1"))
    nh = struct.pack("=HBBi", 8 + len(hop1), 0, 0, 3) + hop1 + struct.pack("=HBBi", 8 + len(hop2), 0, 0, 4) + hop2
    body += rta(netlink.RTA_MULTIPATH, nh)
    route = netlink.parse_route(body)
    assert route["table"] == 1000 and route["metric"] == 20 and route["type"] == "unicast"
    assert route["dst"] is None and route["dst_len"] == 0 and route["oif"] is None
    assert route["nexthops"] == [{"oif": 3, "gateway": "10.1.0.1"}, {"oif": 4, "gateway": "10.2.0.1"}]


def test_parse_route_small_table_without_rta_table():
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 100, 4, 0, 7, 0)
    body += rta(netlink.RTA_DST, socket.inet_aton("198.51.100.7"))
    route = netlink.parse_route(body)
    assert (route["table"], route["dst"], route["dst_len"], route["type"]) == (100, "198.51.100.7", 32, "unreachable")


def run_in(ns, code):
    return ns.python("import json, socket\nfrom wgrouter import netlink\n" + code)


@pytest.fixture
def ns():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with NetNS() as n:
        yield n


@pytest.mark.lab
def test_dumps_in_namespace(ns):
    ns.ip("link", "add", "wan1", "type", "veth", "peer", "name", "wan1p")
    ns.ip("link", "add", "wan2", "type", "veth", "peer", "name", "wan2p")
    for dev in ("wan1", "wan1p", "wan2"):
        ns.ip("link", "set", dev, "up")
    ns.ip("addr", "add", "10.1.0.2/24", "dev", "wan1")
    ns.ip("addr", "add", "10.2.0.2/30", "dev", "wan2")
    ns.ip("route", "add", "default", "via", "10.1.0.1", "dev", "wan1", "metric", "10")
    ns.ip("route", "add", "198.51.100.0/24", "via", "10.1.0.1", "table", "1000", "metric", "5")
    ns.ip("route", "add", "unreachable", "203.0.113.0/24", "table", "1")
    out = run_in(ns, """
print(json.dumps({"links": netlink.dump_links(), "addrs": netlink.dump_addrs(socket.AF_INET),
                  "routes": netlink.dump_routes(), "t1000": netlink.dump_routes(table=1000)}))
""")
    links = {link["ifname"]: link for link in out["links"]}
    assert set(links) == {"lo", "wan1", "wan1p", "wan2", "wan2p"}
    assert links["wan1"]["operstate"] == "UP" and links["wan1"]["carrier"]
    # wan2's peer is down: no carrier
    assert links["wan2"]["up"] and not links["wan2"]["carrier"] and links["wan2"]["operstate"] == "LOWERLAYERDOWN"
    assert not links["wan2p"]["up"]
    addrs = {(a["ifindex"], a["address"], a["prefixlen"]) for a in out["addrs"]}
    assert (links["wan1"]["ifindex"], "10.1.0.2", 24) in addrs
    assert (links["wan2"]["ifindex"], "10.2.0.2", 30) in addrs
    default = [r for r in out["routes"] if r["dst_len"] == 0 and r["table"] == 254 and r["family"] == socket.AF_INET]
    assert len(default) == 1
    assert default[0]["gateway"] == "10.1.0.1" and default[0]["metric"] == 10
    assert default[0]["oif"] == links["wan1"]["ifindex"]
    assert out["t1000"] == [r for r in out["routes"] if r["table"] == 1000]
    assert [(r["dst"], r["dst_len"], r["metric"]) for r in out["t1000"]] == [("198.51.100.0", 24, 5)]
    unreachable = [r for r in out["routes"] if r["table"] == 1]
    assert [(r["dst"], r["type"]) for r in unreachable] == [("203.0.113.0", "unreachable")]


@pytest.mark.lab
def test_multipart_dump(ns):
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")
    ns.ip("addr", "add", "10.1.0.2/16", "dev", "v0")
    batch = "".join("route add 172.16.%d.%d/32 via 10.1.0.1 table 300\n" % (i // 250, i % 250) for i in range(3000))
    import subprocess

    subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=batch, text=True, check=True)
    out = run_in(ns, "print(json.dumps(len(netlink.dump_routes(table=300, family=socket.AF_INET))))")
    assert out == 3000


@pytest.mark.lab
def test_monitor_sees_changes(ns):
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    out = run_in(ns, """
import selectors, subprocess
m = netlink.Monitor()
sel = selectors.DefaultSelector()
sel.register(m, selectors.EVENT_READ)
result = {"idle": m.drain()}
subprocess.run(["ip", "link", "set", "v0", "up"], check=True)
result["ready"] = bool(sel.select(5))
result["link"] = m.drain()
result["after"] = m.drain()
subprocess.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "v0"], check=True)
sel.select(5)
result["addr"] = m.drain()
subprocess.run(["ip", "route", "add", "192.0.2.0/24", "via", "10.9.0.2"], check=True)
sel.select(5)
result["route"] = m.drain()
m.close()
print(json.dumps(result))
""")
    assert out == {"idle": False, "ready": True, "link": True, "after": False, "addr": True, "route": True}


# ------------------------------------------------------------ malformed input


def addr_payload(index, address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    body = struct.pack("=BBBBi", family, 24, 0, 0, index)
    return body + rta(netlink.IFA_ADDRESS, socket.inet_pton(family, address))


@pytest.fixture
def reports(monkeypatch):
    said = []
    monkeypatch.setattr(netlink, "report", said.append)
    monkeypatch.setattr(netlink, "_reported", set())
    return said


@pytest.mark.parametrize("bad", [
    b"",  # no ifaddrmsg at all
    struct.pack("=BBBBi", socket.AF_INET, 24, 0, 0, 5) + rta(netlink.IFA_ADDRESS, b"\1\2\3"),  # 3-byte IPv4
    struct.pack("=BBBBi", 77, 24, 0, 0, 5) + rta(netlink.IFA_ADDRESS, b"\1\2\3\4"),  # unknown family
    struct.pack("=BBBBi", socket.AF_INET, 24, 0, 0, 5) + rta(netlink.IFA_FLAGS, b"\1"),  # short u32
])
def test_a_malformed_message_is_skipped_and_the_rest_of_the_batch_parsed(reports, bad):
    batch = (nlmsg(netlink.RTM_NEWADDR, addr_payload(3, "10.0.1.2"))
             + nlmsg(netlink.RTM_NEWADDR, bad)
             + nlmsg(netlink.RTM_NEWADDR, addr_payload(4, "2001:db8::2")))
    done = nlmsg(netlink.NLMSG_DONE, b"\0\0\0\0")
    got = netlink.collect([batch, done], 1, netlink.parse_addr)
    assert [(a["ifindex"], a["address"]) for a in got] == [(3, "10.0.1.2"), (4, "2001:db8::2")]
    assert len(reports) == 1 and "1 malformed message(s) skipped in a addr dump" in reports[0], reports
    netlink.collect([batch + done], 1, netlink.parse_addr)
    assert len(reports) == 1  # the same complaint is said once


@pytest.mark.parametrize("parse, bad", [
    (netlink.parse_link, struct.pack("=BxHiII", 0, 1, 7, 0, 0) + rta(netlink.IFLA_CARRIER, b"")),
    (netlink.parse_link, struct.pack("=BxHiII", 0, 1, 7, 0, 0) + rta(netlink.IFLA_MTU, b"\1\2")),
    (netlink.parse_route, struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 4, 0, 1, 0)
     + rta(netlink.RTA_GATEWAY, b"\1" * 16)),
    (netlink.parse_route, b"\2\0"),
])
def test_malformed_links_and_routes_are_malformed_not_a_crash(parse, bad):
    with pytest.raises(netlink.Malformed):
        netlink.parse_one(parse, bad)


def test_a_short_error_message_is_skipped_and_a_real_error_still_raised(reports):
    short = nlmsg(netlink.NLMSG_ERROR, b"\1")
    link = nlmsg(netlink.RTM_NEWLINK, link_payload(7, "wan", 1, 6))
    done = nlmsg(netlink.NLMSG_DONE, b"\0\0\0\0")
    assert [x["ifname"] for x in netlink.collect([short + link + done], 1, netlink.parse_link)] == ["wan"]
    refused = nlmsg(netlink.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16)
    with pytest.raises(netlink.NetlinkError, match="EPERM"):
        netlink.collect([refused], 1, netlink.parse_link)
