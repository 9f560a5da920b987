"""wgrouter/wg.py: peers read and set in process, over both transports.

Generic netlink is tested against a fake socket that answers with messages
built here to the layout of torvalds/linux include/uapi/linux/wireguard.h
and drivers/net/wireguard/netlink.c (wg_get_device_dump, get_peer); the
UAPI against a unix socket server speaking wireguard-go's device/uapi.go
(IpcHandle, IpcGetOperation).  The real ones: tests/test_wg_lab.py
(wireguard-go) and tests/test_wg_kernel.py (the kernel, QEMU tier).
"""

import base64
import dataclasses
import errno
import os
import socket
import struct
import threading

import pytest

from tests.fakerunner import FakeRunner
from tests.test_shell import unix_stamps
from wgrouter import apply
from wgrouter import model
from wgrouter import shell
from wgrouter import wg

RAW = [bytes([i]) * 32 for i in (1, 2, 3)]
KEYS = [base64.b64encode(r).decode() for r in RAW]
FAMILY_ID = 0x1d  # what nlctrl gives "wireguard" (any id works)

# ------------------------------------------------------------ netlink builders (independent of wg.py)


def rta(atype, value):
    length = 4 + len(value)
    return struct.pack("=HH", length, atype) + value + b"\0" * ((4 - length % 4) % 4)


def nested(atype, *items):
    return rta(atype | 0x8000, b"".join(items))


def nlmsg(mtype, flags, seq, body):
    length = 16 + len(body)
    return struct.pack("=IHHII", length, mtype, flags, seq, 0) + body + b"\0" * ((4 - length % 4) % 4)


def genl(cmd, attrs):
    return struct.pack("=BBH", cmd, 1, 0) + attrs


def sin(address, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(address) + b"\0" * 8


def sin6(address, port, scope=0):
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", scope))


def allowed(prefix):
    address, bits = prefix.split("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # netlink.c get_allowedips(): CIDR_MASK, FAMILY, IPADDR
    return nested(0, rta(3, bytes([int(bits)])), rta(1, struct.pack("=H", family)),
                  rta(2, socket.inet_pton(family, address)))


def peer_full(raw, endpoint=None, handshake=0, rx=0, tx=0, keepalive=0, ips=()):
    """get_peer() for a peer seen first: every attribute, then allowed IPs."""
    items = [rta(1, raw), rta(2, b"\0" * 32), rta(6, struct.pack("=qq", handshake, 123456789)),
             rta(5, struct.pack("=H", keepalive)),
             rta(0, b""),  # nla_put_u64_64bit's padding attribute (WGPEER_A_UNSPEC)
             rta(8, struct.pack("=Q", tx)), rta(7, struct.pack("=Q", rx)),
             rta(10, struct.pack("=I", 1))]
    if endpoint is not None:
        items.append(rta(4, endpoint))
    if ips:
        items.append(nested(9, *[allowed(p) for p in ips]))
    return nested(0, *items)


def peer_more(raw, ips):
    """The same peer again in the next message: only its key and more allowed IPs."""
    return nested(0, rta(1, raw), nested(9, *[allowed(p) for p in ips]))


def device_first(ifname, *peers, fwmark=0):
    attrs = (rta(6, struct.pack("=H", 51820)) + rta(7, struct.pack("=I", fwmark)) + rta(1, struct.pack("=I", 7))
             + rta(2, ifname.encode() + b"\0") + rta(3, b"\x11" * 32) + rta(4, b"\x22" * 32))
    if peers:
        attrs += nested(8, *peers)
    return genl(0, attrs)


def device_next(ifname, *peers):
    return genl(0, rta(2, ifname.encode() + b"\0") + nested(8, *peers))


def done(seq, code=0):
    return nlmsg(3, 2, seq, struct.pack("=i", code))


def ack(seq, code=0):
    return nlmsg(2, 0, seq, struct.pack("=i", code) + b"\0" * 16)


class FakeGenl:
    """A NETLINK_GENERIC socket: nlctrl answers for "wireguard" (unless
    ``family`` is None), and ``answer(ifname, cmd, attrs, seq, n)`` scripts
    the datagrams of the n-th request to the family."""

    def __init__(self, answer=None, family=FAMILY_ID):
        self.answer = answer
        self.family = family
        self.sent = []  # (type, flags, cmd, attrs) of every request
        self.pending = []
        self.closed = 0
        self.requests = 0

    def __call__(self):  # the sock_factory
        return self

    def settimeout(self, t):
        pass

    def bind(self, addr):
        pass

    def close(self):
        self.closed += 1

    def send(self, data):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        cmd = data[16]
        attrs = data[20:length]
        self.sent.append((mtype, flags, cmd, attrs))
        if mtype == 0x10:  # nlctrl CTRL_CMD_GETFAMILY
            if self.family is None:
                self.pending.append(ack(seq, -errno.ENOENT))
            else:
                body = genl(1, rta(2, b"wireguard\0") + rta(1, struct.pack("=H", self.family)))
                self.pending.append(nlmsg(0x10, 0, seq, body) + ack(seq))
            return len(data)
        assert mtype == FAMILY_ID
        self.requests += 1
        ifname = dict(attr_pairs(attrs)).get(2, b"").rstrip(b"\0").decode()
        self.pending.extend(self.answer(ifname, cmd, attrs, seq, self.requests))
        return len(data)

    def recv(self, size):
        assert self.pending, "recv with nothing to answer"
        return self.pending.pop(0)


def attr_pairs(data):
    out, offset = [], 0
    while offset + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, offset)
        out.append((atype, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def genl_client(answer, family=FAMILY_ID):
    fake = FakeGenl(answer, family)
    return fake, wg.Genetlink(sock_factory=fake)


# ------------------------------------------------------------ genetlink: read

SPILL = [
    device_first("wg0",
                 peer_full(RAW[0], sin("198.51.100.7", 51820), 1700000000, 10, 20, 25, ("10.9.0.0/24",)),
                 peer_full(RAW[1], sin6("2001:db8::7", 4500), 1700000100, 1, 2, 0,
                           ("10.8.0.0/24", "10.8.1.0/24"))),
    # peer 1's allowed IPs did not fit: it comes again with only its key and the rest
    device_next("wg0", peer_more(RAW[1], ("fd00::/64",)),
                peer_full(RAW[2], None, 0, 0, 0, 0, ())),
]


def test_dump_spilled_allowed_ips_are_coalesced():
    def answer(ifname, cmd, attrs, seq, n):
        assert (ifname, cmd) == ("wg0", 0)
        return [nlmsg(FAMILY_ID, 2, seq, SPILL[0]), nlmsg(FAMILY_ID, 2, seq, SPILL[1]) + done(seq)]

    fake, g = genl_client(answer)
    peers = g.get("wg0")
    assert peers == [
        wg.PeerInfo(KEYS[0], "198.51.100.7:51820", 1700000000, 10, 20, 25, ("10.9.0.0/24",)),
        wg.PeerInfo(KEYS[1], "[2001:db8::7]:4500", 1700000100, 1, 2, 0,
                    ("10.8.0.0/24", "10.8.1.0/24", "fd00::/64")),
        wg.PeerInfo(KEYS[2], None, 0, 0, 0, 0, ()),
    ]
    # one family lookup, then the dump: request | dump (netlink.c: dumpit only)
    assert [(t, f) for t, f, _c, _a in fake.sent] == [(0x10, 0x5), (FAMILY_ID, 0x301)]
    assert dict(attr_pairs(fake.sent[1][3])) == {2: b"wg0\0"}
    g.get("wg0")
    assert [t for t, *_ in fake.sent].count(0x10) == 1  # the family id is kept


def test_same_dump_is_not_parsed_again(monkeypatch):
    rx = [10]

    def answer(ifname, cmd, attrs, seq, n):
        body = device_first("wg0", peer_full(RAW[0], sin("198.51.100.7", 51820), 1700000000, rx[0], 20, 25,
                                             ("10.9.0.0/24",)))
        return [nlmsg(FAMILY_ID, 2, seq, body) + done(seq)]

    parsed = []
    real = wg.parse_device_messages
    monkeypatch.setattr(wg, "parse_device_messages", lambda m: parsed.append(1) or real(m))
    fake, g = genl_client(answer)
    first = g.get("wg0")
    assert g.get("wg0") is first and len(parsed) == 1  # another sequence number, the same payload
    rx[0] = 11
    assert g.get("wg0")[0].rx == 11 and len(parsed) == 2
    assert fake.requests == 3


def test_device_fields_come_from_the_first_message_of_the_dump():
    # netlink.c wg_get_device_dump: LISTEN_PORT and FWMARK only while no
    # peer has been sent yet; the next message carries peers alone
    first = device_first("wg0", peer_full(RAW[0], sin("198.51.100.7", 51820), 1700000000, 10, 20, 25),
                         peer_full(RAW[1], None, 0, 0, 0, 0, ("10.8.0.0/24",)), fwmark=0xCA6C)

    def answer(ifname, cmd, attrs, seq, n):
        return [nlmsg(FAMILY_ID, 2, seq, first), nlmsg(FAMILY_ID, 2, seq, SPILL[1]) + done(seq)]

    fake, g = genl_client(answer)
    dev = g.device("wg0")
    assert (dev.listen_port, dev.fwmark) == (51820, 0xCA6C)
    assert [p.public_key for p in dev.peers] == KEYS
    assert dev.peer(KEYS[1]).allowed_ips[-1] == "fd00::/64" and dev.peer("nosuch") is None
    # the daemon's read: the same rows, and the same Device while the dump stays the same
    assert g.get("wg0") == dev.peers and g.device("wg0") is g.device("wg0")
    found, failed = wg.Client((g,)).read_devices(["wg0"])
    assert failed == {} and found["wg0"].fwmark == 0xCA6C


def test_dump_interrupted_is_read_again():
    stale = device_first("wg0", peer_full(RAW[0], sin("192.0.2.1", 1), 5, 0, 0, 0, ()))

    def answer(ifname, cmd, attrs, seq, n):
        if n == 1:  # the configuration changed meanwhile: NLM_F_MULTI | NLM_F_DUMP_INTR
            return [nlmsg(FAMILY_ID, 2 | 0x10, seq, stale) + done(seq)]
        return [nlmsg(FAMILY_ID, 2, seq, SPILL[0]), nlmsg(FAMILY_ID, 2, seq, SPILL[1]) + done(seq)]

    fake, g = genl_client(answer)
    peers = g.get("wg0")
    assert fake.requests == 2
    assert [p.public_key for p in peers] == KEYS and peers[0].endpoint == "198.51.100.7:51820"


def test_dump_interrupted_every_time_gives_up_and_wg_is_asked():
    def answer(ifname, cmd, attrs, seq, n):
        return [nlmsg(FAMILY_ID, 2 | 0x10, seq, SPILL[0]) + done(seq)]

    fake, g = genl_client(answer)
    c = wg.Client((g,))
    found, failed = c.read(["wg0"])
    assert found == {} and "changed during" in failed["wg0"]
    assert fake.requests == wg.DUMP_RETRIES


def test_device_without_peers_and_ipv6_scope():
    def answer(ifname, cmd, attrs, seq, n):
        if ifname == "wg1":
            return [nlmsg(FAMILY_ID, 2, seq, device_first("wg1")) + done(seq)]
        return [nlmsg(FAMILY_ID, 2, seq, device_first("wg2", peer_full(RAW[0], sin6("fe80::1", 7, 1))))
                + done(seq)]

    fake, g = genl_client(answer)
    assert g.get("wg1") == []
    assert g.get("wg2")[0].endpoint == "[fe80::1%%%s]:7" % socket.if_indextoname(1)


@pytest.mark.parametrize("code, missing", [(errno.ENODEV, True), (errno.EOPNOTSUPP, True), (errno.EPERM, False)])
def test_device_errors(code, missing):
    def answer(ifname, cmd, attrs, seq, n):
        return [ack(seq, -code)]  # wg_get_device_start failed: an error, no dump

    fake, g = genl_client(answer)
    found, failed = wg.Client((g,)).read(["wg0"])
    assert found == {}
    if missing:  # no such (WireGuard) device: not present, and wg has nothing to add
        assert failed == {}
    else:
        assert os.strerror(code) in failed["wg0"]
    assert fake.closed == 0  # an error answer leaves the socket usable
    fake.pending.clear()


def test_error_in_the_final_done_is_an_error():
    def answer(ifname, cmd, attrs, seq, n):
        return [nlmsg(FAMILY_ID, 2, seq, SPILL[0]), done(seq, -errno.EMSGSIZE)]

    fake, g = genl_client(answer)
    with pytest.raises(wg.WgError, match="too long"):
        g.get("wg0")


def test_kernel_without_wireguard_is_unavailable():
    fake, g = genl_client(None, family=None)
    with pytest.raises(wg.Unavailable, match="wireguard"):
        g.get("wg0")
    with pytest.raises(wg.Unavailable):
        g.set_peer("wg0", "not a key", "192.0.2.1", 1, 0)  # unavailable first, whatever the request


def test_answers_to_an_abandoned_request_are_skipped():
    def answer(ifname, cmd, attrs, seq, n):
        return [nlmsg(FAMILY_ID, 2, seq - 1, SPILL[1]) + nlmsg(FAMILY_ID, 2, seq, SPILL[0]) + done(seq)]

    fake, g = genl_client(answer)
    assert [p.public_key for p in g.get("wg0")] == KEYS[:2]


# ------------------------------------------------------------ genetlink: set


@pytest.mark.parametrize("address, endpoint", [
    ("198.51.100.7", sin("198.51.100.7", 51820)),
    ("2001:db8::7", sin6("2001:db8::7", 51820)),
])
def test_set_peer_touches_one_peer_only(address, endpoint):
    def answer(ifname, cmd, attrs, seq, n):
        return [ack(seq)]

    fake, g = genl_client(answer)
    g.set_peer("wg0", KEYS[1], address, 51820, 25)
    mtype, flags, cmd, attrs = fake.sent[-1]
    assert (mtype, flags, cmd) == (FAMILY_ID, 0x5, 1)  # request | ack, WG_CMD_SET_DEVICE
    device = attr_pairs(attrs)
    # no WGDEVICE_A_FLAGS (no REPLACE_PEERS), nothing but the name and one peer
    assert [t for t, _ in device] == [2, 8 | 0x8000]
    assert device[0][1] == b"wg0\0"
    (peer,) = attr_pairs(device[1][1])
    assert peer[0] == 0x8000
    fields = attr_pairs(peer[1])
    assert fields == [
        (1, RAW[1]),
        (3, struct.pack("=I", 4)),  # WGPEER_F_UPDATE_ONLY alone: no REPLACE_ALLOWEDIPS
        (4, endpoint),
        (5, struct.pack("=H", 25)),
    ]  # and no WGPEER_A_ALLOWEDIPS


def test_set_peer_error_and_bad_key():
    def answer(ifname, cmd, attrs, seq, n):
        return [ack(seq, -errno.ENODEV)]

    fake, g = genl_client(answer)
    with pytest.raises(wg.NoDevice):
        g.set_peer("wg9", KEYS[0], "192.0.2.1", 1, 0)
    with pytest.raises(wg.WgError, match="not a WireGuard key"):
        g.set_peer("wg9", "short=", "192.0.2.1", 1, 0)


def test_a_timeout_drops_the_socket_and_the_next_call_opens_another():
    made = []

    class Timing(FakeGenl):
        def recv(self, size):
            if self.requests == 1 and self.pending and self.sent[-1][0] == FAMILY_ID:
                self.pending.clear()
                raise socket.timeout("timed out")
            return super().recv(size)

    fake = Timing(lambda ifname, cmd, attrs, seq, n: [nlmsg(FAMILY_ID, 2, seq, SPILL[0]) + done(seq)])
    g = wg.Genetlink(sock_factory=lambda: made.append(1) or fake)
    with pytest.raises(wg.WgError, match="timed out"):
        g.get("wg0")
    assert fake.closed == 1
    assert [p.public_key for p in g.get("wg0")] == KEYS[:2]
    assert len(made) == 2


# ------------------------------------------------------------ UAPI

# what wireguard-go v0.0.20220316 wrote for `get=1` (device/uapi.go IpcGetOperation), keys in hex
GET_REPLY = "\n".join([
    "private_key=" + "11" * 32,
    "listen_port=51820",
    "public_key=" + RAW[0].hex(),
    "preshared_key=" + "00" * 32,
    "protocol_version=1",
    "endpoint=198.51.100.7:51820",
    "last_handshake_time_sec=1700000000",
    "last_handshake_time_nsec=5",
    "tx_bytes=20",
    "rx_bytes=10",
    "persistent_keepalive_interval=25",
    "allowed_ip=10.9.0.0/24",
    "allowed_ip=fd00::/64",
    "public_key=" + RAW[1].hex(),
    "preshared_key=" + "00" * 32,
    "protocol_version=1",
    "last_handshake_time_sec=0",
    "last_handshake_time_nsec=0",
    "tx_bytes=0",
    "rx_bytes=0",
    "persistent_keepalive_interval=0",
    "errno=0",
    "", "",
])


class UapiServer:
    """/RUN/IFACE.sock answering like wireguard-go's IpcHandle: one
    operation per line "get=1"/"set=1", a reply ending in errno=N and a blank
    line, operation after operation on one connection until the client
    closes it (wireguard-go device/uapi.go, IpcHandle's loop).
    ``one_per_connection`` hangs up after each reply instead, as an
    implementation that serves one operation per connection would."""

    def __init__(self, run_dir, ifname, get_reply=GET_REPLY, set_errno=0, chunk=None,
                 one_per_connection=False):
        self.path = os.path.join(run_dir, ifname + ".sock")
        self.get_reply = get_reply
        self.set_errno = set_errno
        self.chunk = chunk
        self.one_per_connection = one_per_connection
        self.requests = []
        self.connections = 0
        self.open = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            with conn:
                while self._one(conn) and not self.one_per_connection:
                    pass

    def _one(self, conn):
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return False
            data += chunk
        text = data.decode()
        self.requests.append(text)
        if text == "get=1\n\n":
            reply = self.get_reply.encode()
        else:
            reply = ("errno=%d\n\n" % self.set_errno).encode()
        step = self.chunk or len(reply)
        for i in range(0, len(reply), step):  # the reply may come in pieces
            conn.sendall(reply[i:i + step])
        return True

    def close(self):
        """The process is gone: its listening socket and every connection."""
        self.sock.close()
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def uapi_dir(tmp_path):
    servers = []

    def serve(ifname, **kw):
        servers.append(UapiServer(str(tmp_path), ifname, **kw))
        return servers[-1]

    yield str(tmp_path), serve
    for s in servers:
        s.close()


@pytest.mark.parametrize("chunk", [None, 7])
def test_uapi_get(uapi_dir, chunk):
    run_dir, serve = uapi_dir
    server = serve("wg0", chunk=chunk)
    peers = wg.Uapi(run_dir).get("wg0")
    assert server.requests == ["get=1\n\n"]
    assert peers == [
        wg.PeerInfo(KEYS[0], "198.51.100.7:51820", 1700000000, 10, 20, 25, ("10.9.0.0/24", "fd00::/64")),
        wg.PeerInfo(KEYS[1], None, 0, 0, 0, 0, ()),
    ]


def test_uapi_same_reply_is_not_parsed_again(uapi_dir, monkeypatch):
    run_dir, serve = uapi_dir
    server = serve("wg0")
    u = wg.Uapi(run_dir)
    parsed = []
    real = wg.parse_uapi
    monkeypatch.setattr(wg, "parse_uapi", lambda lines: parsed.append(1) or real(lines))
    first = u.get("wg0")
    assert u.get("wg0") is first and len(parsed) == 1  # byte for byte the same: the same rows
    server.get_reply = GET_REPLY.replace("rx_bytes=10", "rx_bytes=11")
    third = u.get("wg0")
    assert len(parsed) == 2 and third[0].rx == 11 and first[0].rx == 10
    assert len(server.requests) == 3  # each get still asks


def test_uapi_device_has_listen_port_and_fwmark(uapi_dir):
    run_dir, serve = uapi_dir
    server = serve("wg0", get_reply=GET_REPLY.replace("listen_port=51820\n", "listen_port=51820\nfwmark=51820\n"))
    u = wg.Uapi(run_dir)
    dev = u.device("wg0")
    assert (dev.listen_port, dev.fwmark) == (51820, 0xCA6C)
    assert dev.peers == u.get("wg0") and u.get("wg0") is dev.peers  # one parse serves both
    assert dev.peer(KEYS[0]).allowed_ips == ("10.9.0.0/24", "fd00::/64")
    # wireguard-go writes fwmark only when it is set: absent is off
    server.get_reply = GET_REPLY
    assert u.device("wg0").fwmark == 0
    server.get_reply = GET_REPLY.replace("listen_port=51820", "listen_port=x")
    with pytest.raises(wg.WgError, match="listen_port"):
        u.device("wg0")


def test_uapi_set_one_peer_update_only(uapi_dir):
    run_dir, serve = uapi_dir
    server = serve("wg0")
    wg.Uapi(run_dir).set_peer("wg0", KEYS[1], "2001:db8::7", 443, 15)
    assert server.requests == [
        "set=1\npublic_key=%s\nupdate_only=true\nendpoint=[2001:db8::7]:443\n"
        "persistent_keepalive_interval=15\n\n" % RAW[1].hex()]


def test_uapi_keeps_one_connection_per_device(uapi_dir):
    run_dir, serve = uapi_dir
    server = serve("wg0")
    u = wg.Uapi(run_dir)
    for _ in range(3):
        assert len(u.get("wg0")) == 2
    u.set_peer("wg0", KEYS[1], "192.0.2.1", 51820, 25)
    assert server.connections == 1
    assert len(server.requests) == 4
    u.close()


def test_uapi_new_connection_when_the_kept_one_is_gone(uapi_dir, tmp_path):
    run_dir, serve = uapi_dir
    # an implementation that hangs up after every reply
    server = serve("wg0", one_per_connection=True)
    u = wg.Uapi(run_dir)
    assert len(u.get("wg0")) == 2
    assert len(u.get("wg0")) == 2
    assert server.connections == 2
    # the implementation restarted: its socket is a new one
    server.close()
    os.unlink(server.path)
    again = serve("wg0")
    assert len(u.get("wg0")) == 2
    assert again.connections == 1
    # and gone for good: not userspace any more
    again.close()
    os.unlink(again.path)
    with pytest.raises(wg.Unavailable):
        u.get("wg0")
    u.close()


def test_uapi_kept_connection_that_stops_answering_costs_one_timeout(uapi_dir):
    run_dir, serve = uapi_dir
    server = serve("wg0")
    u = wg.Uapi(run_dir, timeout=0.3)
    assert len(u.get("wg0")) == 2
    # the process hangs: it reads the request and never ends its reply
    server.get_reply = "public_key=" + RAW[0].hex() + "\n"
    with pytest.raises(wg.WgError):
        u.get("wg0")
    # not asked again on a new connection: that would wait a second timeout
    assert server.connections == 1
    u.close()


def test_uapi_drops_a_connection_whose_reply_was_cut(uapi_dir):
    run_dir, serve = uapi_dir
    server = serve("wg0", get_reply="public_key=" + RAW[0].hex() + "\n")  # no errno, no end
    u = wg.Uapi(run_dir, timeout=0.3)
    with pytest.raises(wg.WgError):
        u.get("wg0")
    # the rest of that reply must never be taken for the next one
    server.get_reply = GET_REPLY
    assert len(u.get("wg0")) == 2
    assert server.connections == 2
    u.close()


def test_uapi_errno(uapi_dir):
    run_dir, serve = uapi_dir
    serve("wg0", get_reply="errno=-5\n\n", set_errno=-22)
    u = wg.Uapi(run_dir)
    with pytest.raises(wg.WgError, match="errno=-22"):
        u.set_peer("wg0", KEYS[0], "192.0.2.1", 1, 0)
    with pytest.raises(wg.WgError, match="errno=-5"):
        u.get("wg0")


def test_uapi_missing_or_stale_socket_is_unavailable(tmp_path):
    u = wg.Uapi(str(tmp_path))
    with pytest.raises(wg.Unavailable):
        u.get("wg0")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(u.path("wg0"))  # bound, never listening: its process is gone
    stale.close()
    with pytest.raises(wg.Unavailable):
        u.get("wg0")
    with pytest.raises(wg.Unavailable):
        u.set_peer("wg0", KEYS[0], "192.0.2.1", 1, 0)


# ------------------------------------------------------------ the face: choice per device


def test_client_chooses_per_device(uapi_dir):
    run_dir, serve = uapi_dir
    serve("wgu")

    def answer(ifname, cmd, attrs, seq, n):
        if ifname == "wgk" and cmd == 0:
            return [nlmsg(FAMILY_ID, 2, seq, SPILL[0]) + done(seq)]
        if ifname == "wgk":
            return [ack(seq)]
        return [ack(seq, -errno.ENODEV)]

    fake, g = genl_client(answer)
    c = wg.Client((wg.Uapi(run_dir), g))
    found, failed = c.read(["wgu", "wgk", "gone"])
    assert failed == {} and set(found) == {"wgu", "wgk"}
    assert c.used == {"wgu": "uapi", "wgk": "genetlink"}
    assert [p.public_key for p in found["wgu"]] == KEYS[:2]
    assert [p.public_key for p in found["wgk"]] == KEYS[:2]
    c.set_peer("wgk", KEYS[0], "192.0.2.1", 1, 0)
    assert fake.sent[-1][2] == 1 and c.used["wgk"] == "genetlink"


def test_client_reports_what_no_transport_answers(tmp_path):
    fake, g = genl_client(None, family=None)
    c = wg.Client((wg.Uapi(str(tmp_path)), g))
    found, failed = c.read(["wg0"])
    assert found == {} and "no UAPI socket" in failed["wg0"] and "wireguard" in failed["wg0"]
    with pytest.raises(wg.Unavailable):
        c.set_peer("wg0", KEYS[0], "192.0.2.1", 1, 0)


# ------------------------------------------------------------ the shell and the applier

PEER = model.Peer("wg0", "p", KEYS[0], (model.Endpoint("198.51.100.7"),), ("10.9.0.0/24",), 25)
PEER_B = model.Peer("wg1", "q", KEYS[1], (model.Endpoint("198.51.100.8"),), ("10.8.0.0/24",), 0)
CONFIG = model.Config(model.Settings(), (model.Wan("wan", "eth1"),),
                      (model.Tunnel("wg0", (PEER,)), model.Tunnel("wg1", (PEER_B,))))


class Transport:
    """A transport answering from a dict: {device: [PeerInfo]} (absent: no device)."""

    name = "fake"

    def __init__(self, devices, unavailable=()):
        self.devices = devices
        self.unavailable = set(unavailable)
        self.sets = []

    def get(self, ifname):
        if ifname in self.unavailable:
            raise wg.Unavailable("%s: not here" % ifname)
        if ifname not in self.devices:
            raise wg.NoDevice(ifname)
        return self.devices[ifname]

    def set_peer(self, ifname, key, address, port, keepalive):
        if ifname in self.unavailable:
            raise wg.Unavailable("%s: not here" % ifname)
        self.sets.append((ifname, key, address, port, keepalive))

    def close(self):
        pass


ROW = wg.PeerInfo(KEYS[0], "198.51.100.7:51820", 1700000000, 10, 20, 25, ("10.9.0.0/24",))


def test_steady_state_check_forks_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(shell.kernel, "observe_wans",
                        lambda wans, mwan3=False: {w.name: model.WanState(w.name, w.device, True) for w in wans})
    fake = FakeRunner()
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), wg=wg.Client((Transport({"wg0": [ROW]}),)))
    for _ in range(3):
        _, peers, present = s.observe(False)
    assert unix_stamps(s, peers) == {("wg0", KEYS[0]): model.PeerStats("198.51.100.7:51820", 1700000000,
                                                                        10, 20, 25)}
    assert present == frozenset({"wg0"})  # wg1 has no device
    assert fake.calls == [] and fake.spawned == []


def test_the_same_rows_give_the_same_stats_without_converting_again(tmp_path, monkeypatch):
    monkeypatch.setattr(shell.kernel, "observe_wans",
                        lambda wans, mwan3=False: {w.name: model.WanState(w.name, w.device, True) for w in wans})
    rows = {"wg0": [ROW]}
    s = shell.Shell(CONFIG, root=str(tmp_path), wg=wg.Client((Transport(rows),)))
    _, first, _ = s.observe(False)
    _, again, _ = s.observe(False)
    assert again is first
    rows["wg0"] = [dataclasses.replace(ROW, rx=11)]  # a new list: read anew
    _, third, _ = s.observe(False)
    assert third is not first and third[("wg0", KEYS[0])].rx == 11


def test_wg_is_asked_only_for_the_device_no_transport_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(shell.kernel, "observe_wans",
                        lambda wans, mwan3=False: {w.name: model.WanState(w.name, w.device, True) for w in wans})
    dump = "\n".join([
        "wg0\tpriv\tpub\t51820\toff",
        "wg0\t%s\t(none)\t192.0.2.99:1\t10.9.0.0/24\t5\t5\t5\toff" % KEYS[0],  # ignored: read in process
        "wg1\tpriv\tpub\t51821\toff",
        "wg1\t%s\t(none)\t198.51.100.8:51820\t10.8.0.0/24\t1700000100\t1\t2\toff" % KEYS[1],
        ""])
    fake = FakeRunner().on(["wg", "show", "all", "dump"], out=dump)
    t = Transport({"wg0": [ROW]}, unavailable=("wg1",))
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), wg=wg.Client((t,)))
    _, peers, present = s.observe(False)
    assert fake.calls == [["wg", "show", "all", "dump"]]
    assert unix_stamps(s, peers) == {("wg0", KEYS[0]): ROW.stats(),
                                     ("wg1", KEYS[1]): model.PeerStats("198.51.100.8:51820", 1700000100, 1, 2, 0)}
    assert present == frozenset({"wg0", "wg1"})
    fake.on(["wg"], rc=1, err="Unable to access interface: Protocol not supported")
    _, peers, present = s.observe(False)
    assert present is None and "Protocol not supported" in s.wg_error and "not here" in s.wg_error


def test_applier_sets_in_process_and_falls_back_to_wg_set(tmp_path):
    fake = FakeRunner()
    t = Transport({}, unavailable=("wg1",))
    a = apply.Applier(fake, str(tmp_path / "s.json"), config=CONFIG, kick=None, wg=wg.Client((t,)))
    ev = a.execute(model.ApplyPath("wg0", KEYS[0], "wan", "eth1", "10.1.0.1", "198.51.100.7", 51820, 25))
    assert ev.data["ok"] and "endpoint" in ev.data["steps"]
    assert t.sets == [("wg0", KEYS[0], "198.51.100.7", 51820, 25)]
    assert [c[0] for c in fake.calls] == ["ip", "conntrack"]  # no wg forked
    ev = a.execute(model.ApplyPath("wg1", KEYS[1], "wan", "eth1", "10.1.0.1", "198.51.100.8", 51820, 0))
    assert ev.data["ok"]
    assert fake.commands("wg") == [["wg", "set", "wg1", "peer", KEYS[1], "endpoint", "198.51.100.8:51820",
                                    "persistent-keepalive", "0"]]


def test_applier_in_process_error_fails_the_step(tmp_path):
    class Failing(Transport):
        def set_peer(self, *args):
            raise wg.WgError("wg0: UAPI errno=-22")

    fake = FakeRunner()
    a = apply.Applier(fake, str(tmp_path / "s.json"), config=CONFIG, kick=None, wg=wg.Client((Failing({}),)))
    ev = a.execute(model.ApplyPath("wg0", KEYS[0], "wan", "eth1", "10.1.0.1", "198.51.100.7", 51820, 25))
    assert not ev.data["ok"] and "errno=-22" in ev.data["error"] and "endpoint" not in ev.data["steps"]
    assert fake.commands("wg") == []
