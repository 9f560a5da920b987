"""A small rtnetlink client in pure stdlib: change notifications and dumps.

``Monitor`` is the one long-lived socket: the daemon polls its fd and calls
``drain()``; only when that says something changed does it dump links,
addresses and routes (each dump is a short-lived socket).
"""

import errno
import socket
import struct

import wgrouter


class NetlinkError(wgrouter.Error):
    """netlink request failed"""


NETLINK_ROUTE = 0

# message types
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
CHANGES = frozenset(
    (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE)
)

# flags
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP = 0x300

# multicast groups
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)

# link attributes and flags
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_CARRIER = 33
IFF_UP = 0x1
IFF_POINTOPOINT = 0x10
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

# address attributes
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8  # u32, supersedes the 8-bit ifa_flags
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

# route attributes and values
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTN_TYPES = {
    1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
    6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat",
}

_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNEXTHOP = struct.Struct("=HBBi")

# Large enough for one kernel dump batch (it fills at most 32 KiB, or the
# reader's buffer when that is bigger).
RECV_SIZE = 65536


def _align(n):
    return (n + 3) & ~3


def messages(data):
    """Split a netlink datagram into (type, flags, seq, payload) tuples."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        yield mtype, flags, seq, data[offset + _NLMSGHDR.size:offset + length]
        offset += _align(length)


def attributes(data, offset=0):
    """Parse rtattrs from data[offset:] into {type: bytes} (nested flag masked)."""
    attrs = {}
    while offset + _RTATTR.size <= len(data):
        length, atype = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        attrs[atype & 0x3FFF] = data[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    return attrs


def _u32(value):
    return struct.unpack("=I", value[:4])[0]


def _str(value):
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _ip(family, value):
    return socket.inet_ntop(family, value)


def parse_link(payload):
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = attributes(payload, _IFINFOMSG.size)
    operstate = attrs.get(IFLA_OPERSTATE, b"\0")[0]
    kind = None
    if IFLA_LINKINFO in attrs:
        kind_attr = attributes(attrs[IFLA_LINKINFO]).get(IFLA_INFO_KIND)
        kind = _str(kind_attr) if kind_attr else None
    return {
        "ifindex": index,
        "ifname": _str(attrs.get(IFLA_IFNAME, b"")),
        "flags": flags,
        "up": bool(flags & IFF_UP),
        "lower_up": bool(flags & IFF_LOWER_UP),
        "pointopoint": bool(flags & IFF_POINTOPOINT),
        "operstate": OPERSTATES[operstate] if operstate < len(OPERSTATES) else str(operstate),
        "carrier": bool(attrs[IFLA_CARRIER][0]) if IFLA_CARRIER in attrs else bool(flags & IFF_LOWER_UP),
        "mtu": _u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else None,
        "kind": kind,
    }


def parse_addr(payload):
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(payload)
    attrs = attributes(payload, _IFADDRMSG.size)
    # On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    peer = attrs.get(IFA_ADDRESS)
    return {
        "family": family,
        "ifindex": index,
        "address": _ip(family, raw) if raw else None,
        "peer": _ip(family, peer) if peer and peer != raw else None,
        "prefixlen": prefixlen,
        "scope": scope,
        "flags": _u32(attrs[IFA_FLAGS]) if IFA_FLAGS in attrs else flags,
        "label": _str(attrs[IFA_LABEL]) if IFA_LABEL in attrs else None,
    }


def parse_route(payload):
    (family, dst_len, _src_len, _tos, table, protocol, scope, rtype, _flags) = _RTMSG.unpack_from(payload)
    attrs = attributes(payload, _RTMSG.size)
    if RTA_TABLE in attrs:  # the 8-bit rtm_table field cannot hold tables > 255
        table = _u32(attrs[RTA_TABLE])
    nexthops = []
    if RTA_MULTIPATH in attrs:
        data = attrs[RTA_MULTIPATH]
        offset = 0
        while offset + _RTNEXTHOP.size <= len(data):
            length, _nhflags, _hops, ifindex = _RTNEXTHOP.unpack_from(data, offset)
            if length < _RTNEXTHOP.size:
                break
            nh = attributes(data[offset:offset + length], _RTNEXTHOP.size)
            gateway = nh.get(RTA_GATEWAY)
            nexthops.append({"oif": ifindex, "gateway": _ip(family, gateway) if gateway else None})
            offset += _align(length)
    gateway = attrs.get(RTA_GATEWAY)
    dst = attrs.get(RTA_DST)
    prefsrc = attrs.get(RTA_PREFSRC)
    return {
        "family": family,
        "dst": _ip(family, dst) if dst else None,
        "dst_len": dst_len,
        "gateway": _ip(family, gateway) if gateway else None,
        "oif": _u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None,
        "table": table,
        "metric": _u32(attrs[RTA_PRIORITY]) if RTA_PRIORITY in attrs else 0,
        "type": RTN_TYPES.get(rtype, str(rtype)),
        "protocol": protocol,
        "scope": scope,
        "prefsrc": _ip(family, prefsrc) if prefsrc else None,
        "nexthops": nexthops,
    }


class Malformed(NetlinkError):
    """malformed netlink message"""


# Where a skipped message is said: the daemon sets its log here.  Each
# distinct complaint is said once (a kernel that keeps sending the same odd
# message would otherwise log it on every dump), up to REPORTS_MAX of them.
report = None
REPORTS_MAX = 32
_reported = set()


def _report(text):
    if report is None or text in _reported or len(_reported) >= REPORTS_MAX:
        return
    _reported.add(text)
    report(text)


def parse_one(parse, payload):
    """``parse(payload)``, with any failure on a malformed payload (too short,
    an attribute of the wrong size, an address of an unknown family) made
    Malformed."""
    try:
        return parse(payload)
    except (struct.error, ValueError, IndexError, TypeError, OverflowError) as e:
        raise Malformed("%s: %s" % (parse.__name__, e)) from None


def collect(datagrams, seq, parse):
    """The parsed messages of one dump, from an iterable of datagrams, up to
    its NLMSG_DONE.  A malformed message is skipped (and reported once);
    the rest of its batch is parsed.  NetlinkError when the kernel refuses
    the dump."""
    result = []
    skipped = []
    for data in datagrams:
        for rtype, _flags, rseq, payload in messages(data):
            if rseq != seq:
                continue
            if rtype == NLMSG_DONE:
                if skipped:
                    _report("netlink: %d malformed message(s) skipped in a %s dump (first: %s)"
                            % (len(skipped), parse.__name__[len("parse_"):], skipped[0]))
                return result
            if rtype == NLMSG_ERROR:
                if len(payload) < 4:
                    skipped.append("NLMSG_ERROR of %d bytes" % len(payload))
                    continue
                code = -struct.unpack_from("=i", payload)[0]
                if code == 0:
                    continue
                raise NetlinkError("netlink dump failed: %s" % errno.errorcode.get(code, code))
            if rtype == NLMSG_OVERRUN or rtype == NLMSG_NOOP:
                continue
            try:
                result.append(parse_one(parse, payload))
            except Malformed as e:
                skipped.append(str(e))
    raise NetlinkError("netlink dump ended without NLMSG_DONE")


def _dump(mtype, header, parse):
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        seq = 1
        flags = NLM_F_REQUEST | NLM_F_DUMP
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(header), mtype, flags, seq, 0) + header)
        return collect(iter(lambda: sock.recv(RECV_SIZE), None), seq, parse)
    finally:
        sock.close()


def dump_links():
    """All links: [{ifindex, ifname, flags, up, lower_up, pointopoint, operstate, carrier, mtu, kind}]."""
    return _dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), parse_link)


def dump_addrs(family=socket.AF_UNSPEC):
    """All addresses: [{family, ifindex, address, peer, prefixlen, scope, flags, label}]."""
    return _dump(RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0), parse_addr)


def dump_routes(table=None, family=socket.AF_UNSPEC):
    """Routes of every table (or only ``table``): [{family, dst, dst_len,
    gateway, oif, table, metric, type, protocol, scope, prefsrc, nexthops}]."""
    routes = _dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), parse_route)
    if table is not None:
        routes = [r for r in routes if r["table"] == table]
    return routes


class Monitor:
    """Subscribed to link, address and route changes (IPv4 and IPv6)."""

    def __init__(self, groups=GROUPS):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            self._sock.bind((0, groups))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise

    def fileno(self):
        return self._sock.fileno()

    def drain(self) -> bool:
        """Read every pending message; True if any was a link/addr/route change.

        A receive-buffer overrun (ENOBUFS) lost messages, so it counts as a change.
        """
        changed = False
        while True:
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return changed
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    changed = True
                    continue
                raise
            if not data:
                return changed
            for mtype, _flags, _seq, _payload in messages(data):
                if mtype in CHANGES:
                    changed = True

    def close(self):
        self._sock.close()
