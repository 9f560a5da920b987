"""Read and set WireGuard peers in-process, without forking `wg`.

One face, two transports, chosen per device the way wireguard-tools' own
`wg` chooses (ipc.h: the userspace socket first, then the kernel):

- ``Uapi``: the cross-platform configuration protocol of userspace
  implementations (wireguard-go) on /var/run/wireguard/IFACE.sock.
- ``Genetlink``: in-kernel WireGuard (every OpenWrt router), the generic
  netlink family ``wireguard``.

``Client.read(names)`` gives every device's peers as ``PeerInfo`` rows, the
same rows ``wgdump`` parses out of `wg show all dump`; ``Client.read_devices``
gives each as a ``Device`` (its listen port and fwmark too); ``Client.set_peer``
sets one peer's endpoint and persistent keepalive and touches nothing else.
A device neither transport answers for raises (or is reported as)
``Unavailable``: the caller then forks `wg`, the fallback.  Pure stdlib
(socket, struct), like ``wgrouter.netlink``.
"""

import base64
import dataclasses
import errno
import os
import socket
import struct
import sys
import typing

import wgrouter
from wgrouter import model
from wgrouter import netlink


class WgError(wgrouter.Error):
    """WireGuard request failed"""


class Unavailable(WgError):
    """no in-process transport answers for this device"""


class NoDevice(WgError):
    """no such WireGuard device"""


@dataclasses.dataclass(frozen=True)
class PeerInfo:
    """One peer as `wg show IF dump` shows it (keys in base64)."""

    public_key: str
    endpoint: typing.Optional[str]  # "ip:port", "[ip6]:port", None = (none)
    latest_handshake: int  # unix seconds, 0 = never
    rx: int
    tx: int
    keepalive: int  # 0 = off
    allowed_ips: typing.Tuple[str, ...] = ()

    def stats(self) -> model.PeerStats:
        return model.PeerStats(self.endpoint, self.latest_handshake, self.rx, self.tx, self.keepalive)


@dataclasses.dataclass(frozen=True)
class Device:
    """One device as `wg show IF dump` shows it, without its keys."""

    listen_port: int = 0
    fwmark: int = 0  # 0 = off
    peers: list = dataclasses.field(default_factory=list)  # [PeerInfo] in the implementation's order

    def peer(self, public_key):
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None


KEY_LEN = 32
# A hung implementation must not stall the daemon's loop for long; `wg`
# itself was given 5 s by the runner, an in-process answer takes microseconds.
TIMEOUT = 2.0


def _key(b64):
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != KEY_LEN:
        raise WgError("not a WireGuard key: %r" % b64[:8])
    return raw


def _b64(raw):
    return base64.b64encode(raw).decode()


def _join(host, port):
    """host:port as wg prints it (wireguard-tools show.c: brackets for IPv6)."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


# ---------------------------------------------------------------- UAPI
# The configuration protocol, https://www.wireguard.com/xplatform/ , as
# WireGuard/wireguard-go device/uapi.go serves it: IpcHandle reads "get=1\n"
# or "set=1\n"; IpcGetOperation writes key=value lines (keys in hex), the
# device's first (private_key, listen_port, fwmark, each only when not 0),
# then per peer public_key, preshared_key, protocol_version, endpoint,
# last_handshake_time_sec/_nsec, tx_bytes, rx_bytes,
# persistent_keepalive_interval and one allowed_ip line each; every reply
# ends with "errno=N\n\n".  handlePeerLine takes update_only=true (do not
# create the peer), endpoint= and persistent_keepalive_interval=.

RUN_DIR = "/var/run/wireguard"  # wireguard-go ipc/uapi_unix.go socketDirectory
MAX_REPLY = 1 << 20  # thousands of peers; a reply never ending is not one


class _Transport:
    def get(self, ifname):
        """[PeerInfo] of ``ifname``: its Device's peers."""
        return self.device(ifname).peers


class Uapi(_Transport):
    """Userspace WireGuard through its unix socket.

    One connection per device is kept open between requests: IpcHandle
    serves operation after operation on a connection until it is closed
    (wireguard-go device/uapi.go, its ``for`` loop), so a check costs one
    write and one read instead of a socket, a connect and a close.  A kept
    connection that fails (the implementation restarted, or one that serves
    a single operation and hangs up) is dropped and the request is sent
    once more on a new one; a connection whose reply was not read to its
    end is never used again.
    """

    name = "uapi"

    def __init__(self, run_dir=RUN_DIR, timeout=TIMEOUT):
        self.run_dir = run_dir
        self.timeout = timeout
        self._socks = {}  # device -> the connection kept open to it
        self._parsed = {}  # device -> (its last get reply, the Device of it)

    def path(self, ifname):
        return os.path.join(self.run_dir, ifname + ".sock")

    def _connect(self, ifname):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path(ifname))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            sock.close()
            # no socket, or one its process left behind: not userspace
            raise Unavailable("%s: no UAPI socket (%s)" % (ifname, e.strerror)) from None
        except OSError as e:
            sock.close()
            raise WgError("%s: UAPI: %s" % (ifname, e)) from None
        return sock

    def _exchange(self, ifname, sock, text):
        """The reply's bytes, up to its blank line; b"" when the connection
        was closed before any of it came."""
        sock.sendall(text.encode())
        data = bytearray()
        # the body has no blank line: the one after errno= ends the reply
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REPLY:
                raise WgError("%s: UAPI reply too long" % ifname)
        return bytes(data)

    def _request(self, ifname, text):
        """Send one operation; returns the reply's lines without errno."""
        return self._lines(ifname, self._send(ifname, text))

    def _send(self, ifname, text):
        """Send one operation; returns the reply's bytes."""
        sock = self._socks.pop(ifname, None)
        data = b""
        try:
            if sock is not None:
                try:
                    data = self._exchange(ifname, sock, text)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # it hung up since the last request
                if not data:
                    # closed before it answered: once more on a new one (a
                    # timeout is not retried: a hung process would cost the
                    # loop twice the timeout)
                    sock.close()
                    sock = None
            if sock is None:
                sock = self._connect(ifname)
                data = self._exchange(ifname, sock, text)
        except OSError as e:
            if sock is not None:
                sock.close()
            raise WgError("%s: UAPI: %s" % (ifname, e)) from None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if data.endswith(b"\n\n"):
            self._socks[ifname] = sock  # read to its end: fit for the next
        else:
            sock.close()
        return data

    @staticmethod
    def _lines(ifname, data):
        lines = data.decode("utf-8", "replace").split("\n")
        while lines and not lines[-1]:
            lines.pop()
        if not lines or not lines[-1].startswith("errno="):
            raise WgError("%s: UAPI reply without errno" % ifname)
        code = lines.pop()[len("errno="):]
        if code != "0":
            raise WgError("%s: UAPI errno=%s" % (ifname, code))
        return lines

    def device(self, ifname):
        """The Device ``ifname``; Unavailable when it has no socket.  A
        reply byte for byte the last one (an idle tunnel between two
        keepalives) gives the same Device again, not parsed anew."""
        data = self._send(ifname, "get=1\n\n")
        last = self._parsed.get(ifname)
        if last is not None and last[0] == data:
            return last[1]
        device = parse_uapi(self._lines(ifname, data))
        self._parsed[ifname] = (data, device)
        return device

    def set_peer(self, ifname, public_key, address, port, keepalive):
        if not os.path.exists(self.path(ifname)):
            raise Unavailable("%s: no UAPI socket" % ifname)
        text = "set=1\npublic_key=%s\nupdate_only=true\nendpoint=%s\npersistent_keepalive_interval=%d\n\n" % (
            _key(public_key).hex(), _join(address, port), keepalive)
        self._request(ifname, text)

    def close(self):
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
        self._parsed.clear()


def parse_uapi(lines):
    """The Device of the key=value lines of a UAPI get reply."""
    device = {"listen_port": 0, "fwmark": 0}  # absent: 0, which for fwmark is off
    peers = []
    peer = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise WgError("unexpected UAPI line %r" % line[:40])
        if key == "public_key":
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b""
            if len(raw) != KEY_LEN:
                raise WgError("unexpected UAPI public_key")
            peer = {"public_key": _b64(raw), "endpoint": None, "latest_handshake": 0,
                    "rx": 0, "tx": 0, "keepalive": 0, "allowed_ips": []}
            peers.append(peer)
            continue
        try:
            if peer is None:
                if key in device:  # a device key; private_key is never kept
                    device[key] = int(value)
            elif key == "endpoint":
                peer["endpoint"] = value
            elif key == "last_handshake_time_sec":
                peer["latest_handshake"] = int(value)
            elif key == "rx_bytes":
                peer["rx"] = int(value)
            elif key == "tx_bytes":
                peer["tx"] = int(value)
            elif key == "persistent_keepalive_interval":
                peer["keepalive"] = int(value)
            elif key == "allowed_ip":
                peer["allowed_ips"].append(value)
        except ValueError:
            raise WgError("unexpected UAPI value for %s" % key) from None
    return Device(device["listen_port"], device["fwmark"], [_freeze(p) for p in peers])


def _freeze(peer):
    return PeerInfo(peer["public_key"], peer["endpoint"], peer["latest_handshake"], peer["rx"],
                    peer["tx"], peer["keepalive"], tuple(peer["allowed_ips"]))


# ---------------------------------------------------------------- genetlink
# torvalds/linux include/uapi/linux/wireguard.h (the layout, documented at
# its top) and drivers/net/wireguard/netlink.c (wg_get_device_dump, get_peer,
# set_peer).  Nested lists (peers, allowed IPs) are attributes all of type 0.

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_LISTEN_PORT = 6
WGDEVICE_A_FWMARK = 7
WGDEVICE_A_PEERS = 8
WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_FLAGS = 3
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGPEER_F_UPDATE_ONLY = 1 << 2
WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLA_F_NESTED = 0x8000
# A dump the configuration changed under (NLM_F_DUMP_INTR) is read again;
# netifd's syncconf at boot can interrupt one or two, never many in a row.
DUMP_RETRIES = 5

_NLMSGHDR = struct.Struct("=IHHII")
_GENLMSGHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
_TIMESPEC = struct.Struct("=qq")  # struct __kernel_timespec


class Interrupted(WgError):
    """the device changed during the dump (NLM_F_DUMP_INTR)"""


def attr(atype, value):
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, atype) + value + b"\0" * (-length % 4)


def nest(atype, *values):
    return attr(atype | NLA_F_NESTED, b"".join(values))


def attr_list(data):
    """[(type, value)] of the attributes in data (repeats kept, nested flag masked)."""
    out = []
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, atype = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            break
        out.append((atype & 0x3FFF, data[offset + _NLATTR.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def genl_message(family, flags, seq, cmd, attrs):
    body = _GENLMSGHDR.pack(cmd, WG_GENL_VERSION, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, flags, seq, 0) + body


def sockaddr(address, port):
    """struct sockaddr_in / sockaddr_in6 for WGPEER_A_ENDPOINT."""
    if ":" in address:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
            + socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", 0)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) \
        + socket.inet_pton(socket.AF_INET, address) + b"\0" * 8


def parse_sockaddr(value):
    """"ip:port" from a struct sockaddr_in / sockaddr_in6, None for none."""
    if len(value) < 2:
        return None
    family = struct.unpack_from("=H", value)[0]
    if family == socket.AF_INET and len(value) >= 8:
        port = struct.unpack_from("!H", value, 2)[0]
        return _join(socket.inet_ntop(socket.AF_INET, value[4:8]), port)
    if family == socket.AF_INET6 and len(value) >= 28:
        port = struct.unpack_from("!H", value, 2)[0]
        host = socket.inet_ntop(socket.AF_INET6, value[8:24])
        scope = struct.unpack_from("=I", value, 24)[0]
        if scope:  # as getnameinfo() prints it for wg: fe80::1%eth0
            try:
                host += "%" + socket.if_indextoname(scope)
            except OSError:
                host += "%%%d" % scope
        return _join(host, port)
    return None


def _allowed_ip(value):
    a = dict(attr_list(value))
    family = struct.unpack("=H", a[WGALLOWEDIP_A_FAMILY][:2])[0]
    size = 16 if family == socket.AF_INET6 else 4
    return "%s/%d" % (socket.inet_ntop(family, a[WGALLOWEDIP_A_IPADDR][:size]), a[WGALLOWEDIP_A_CIDR_MASK][0])


def parse_device_messages(payloads):
    """The Device of the WG_CMD_GET_DEVICE payloads of one dump.

    A peer whose allowed IPs did not fit comes again in the next message
    with only its public key and the rest of them (wireguard.h): coalesced.
    """
    device = {WGDEVICE_A_LISTEN_PORT: 0, WGDEVICE_A_FWMARK: 0}
    peers = {}  # base64 key -> dict, in the kernel's order
    for payload in payloads:
        for atype, value in attr_list(payload[_GENLMSGHDR.size:]):
            if atype in device:  # wg_get_device_dump: first message only, u16 / u32, host order
                device[atype] = int.from_bytes(value, sys.byteorder)
            if atype != WGDEVICE_A_PEERS:
                continue
            for _index, peer_data in attr_list(value):
                p = dict(attr_list(peer_data))
                if WGPEER_A_PUBLIC_KEY not in p:
                    raise WgError("peer without public key in the wireguard dump")
                key = _b64(p[WGPEER_A_PUBLIC_KEY])
                peer = peers.setdefault(key, {"public_key": key, "endpoint": None, "latest_handshake": 0,
                                              "rx": 0, "tx": 0, "keepalive": 0, "allowed_ips": []})
                try:
                    if WGPEER_A_ENDPOINT in p:
                        peer["endpoint"] = parse_sockaddr(p[WGPEER_A_ENDPOINT])
                    if WGPEER_A_LAST_HANDSHAKE_TIME in p:
                        peer["latest_handshake"] = _TIMESPEC.unpack(p[WGPEER_A_LAST_HANDSHAKE_TIME][:16])[0]
                    if WGPEER_A_RX_BYTES in p:
                        peer["rx"] = struct.unpack("=Q", p[WGPEER_A_RX_BYTES][:8])[0]
                    if WGPEER_A_TX_BYTES in p:
                        peer["tx"] = struct.unpack("=Q", p[WGPEER_A_TX_BYTES][:8])[0]
                    if WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL in p:
                        peer["keepalive"] = struct.unpack(
                            "=H", p[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL][:2])[0]
                    for _i, ip in attr_list(p.get(WGPEER_A_ALLOWEDIPS, b"")):
                        peer["allowed_ips"].append(_allowed_ip(ip))
                except (struct.error, KeyError, IndexError, ValueError, OSError):
                    raise WgError("malformed peer %s in the wireguard dump" % key[:8]) from None
    return Device(device[WGDEVICE_A_LISTEN_PORT], device[WGDEVICE_A_FWMARK],
                  [_freeze(p) for p in peers.values()])


class _Refused(OSError):
    """the kernel answered a request with an errno (the socket stays usable)"""


def _error_code(payload):
    return -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0


class Genetlink(_Transport):
    """In-kernel WireGuard through generic netlink: one socket, kept open."""

    name = "genetlink"

    def __init__(self, timeout=TIMEOUT, sock_factory=None):
        self.timeout = timeout
        self._factory = sock_factory or (
            lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC))
        self._sock = None
        self._family = None
        self._seq = 0
        self._parsed = {}  # device -> (its last dump's payloads, the Device of them)

    def close(self):
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._family = None
        self._parsed.clear()

    def _socket(self):
        if self._sock is None:
            try:
                sock = self._factory()
            except OSError as e:  # no netlink at all (EAFNOSUPPORT, EPROTONOSUPPORT)
                raise Unavailable("generic netlink: %s" % e) from None
            try:
                sock.settimeout(self.timeout)
                sock.bind((0, 0))
            except OSError as e:
                sock.close()
                raise Unavailable("generic netlink: %s" % e) from None
            self._sock = sock
        return self._sock

    def _exchange(self, family, flags, cmd, attrs):
        """Send one request; returns the messages answering it as
        [(flags, payload)]: a dump's until NLMSG_DONE, else until the ack."""
        sock = self._socket()
        self._seq = self._seq % 0x7FFFFFFF + 1
        seq = self._seq
        dump = flags & netlink.NLM_F_DUMP == netlink.NLM_F_DUMP
        if not dump:
            flags |= NLM_F_ACK
        out = []
        try:
            sock.send(genl_message(family, flags, seq, cmd, attrs))
            while True:
                data = sock.recv(netlink.RECV_SIZE)
                if not data:
                    raise OSError(errno.EIO, "netlink socket closed")
                for mtype, mflags, mseq, payload in netlink.messages(data):
                    if mseq != seq:
                        continue  # an answer to an earlier, abandoned request
                    if mtype in (netlink.NLMSG_ERROR, netlink.NLMSG_DONE):
                        # wireguard.h: a dump's NLMSG_DONE carries its error code
                        code = _error_code(payload)
                        if code:
                            raise _Refused(code, os.strerror(code))
                        if mtype == netlink.NLMSG_DONE or not dump:
                            return out
                        continue
                    if mtype in (netlink.NLMSG_NOOP, netlink.NLMSG_OVERRUN):
                        continue
                    out.append((mflags, payload))
        except _Refused:
            raise
        except OSError:
            # a timeout or a half-read dump leaves the socket unusable
            self.close()
            raise

    def family(self):
        if self._family is None:
            name = attr(CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME.encode() + b"\0")
            try:
                answer = self._exchange(GENL_ID_CTRL, netlink.NLM_F_REQUEST, CTRL_CMD_GETFAMILY, name)
            except OSError as e:
                # ENOENT: the kernel has no WireGuard (nor a module to load)
                raise Unavailable("generic netlink family %s: %s" % (WG_GENL_NAME, e.strerror or e)) from None
            for _flags, payload in answer:
                a = dict(attr_list(payload[_GENLMSGHDR.size:]))
                if CTRL_ATTR_FAMILY_ID in a:
                    self._family = struct.unpack("=H", a[CTRL_ATTR_FAMILY_ID][:2])[0]
            if self._family is None:
                raise Unavailable("generic netlink: no id for family %s" % WG_GENL_NAME)
        return self._family

    def _device_request(self, ifname, flags, cmd, extra=b""):
        family = self.family()
        try:
            return self._exchange(family, flags, cmd, attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0") + extra)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EOPNOTSUPP):
                # lookup_interface(): no such device, or not a WireGuard one
                raise NoDevice("%s: no WireGuard device (%s)" % (ifname, e.strerror)) from None
            raise WgError("%s: wireguard netlink: %s" % (ifname, e.strerror or e)) from None

    def device(self, ifname):
        """The Device ``ifname`` (a dump: WG_CMD_GET_DEVICE is dumpit only)."""
        for _attempt in range(DUMP_RETRIES):
            answer = self._device_request(ifname, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, WG_CMD_GET_DEVICE)
            if any(flags & NLM_F_DUMP_INTR for flags, _payload in answer):
                continue
            # the messages without their headers (whose sequence number
            # differs every time): the same as the last dump's, the same rows
            payloads = tuple(payload for _flags, payload in answer)
            last = self._parsed.get(ifname)
            if last is not None and last[0] == payloads:
                return last[1]
            device = parse_device_messages(payloads)
            self._parsed[ifname] = (payloads, device)
            return device
        raise Interrupted("%s: the device changed during %d dumps in a row" % (ifname, DUMP_RETRIES))

    def set_peer(self, ifname, public_key, address, port, keepalive):
        """One peer, WGPEER_F_UPDATE_ONLY, endpoint and keepalive: no
        WGDEVICE_F_REPLACE_PEERS, no WGPEER_F_REPLACE_ALLOWEDIPS, no allowed
        IP, so no other peer and none of this one's allowed IPs change.  An
        endpoint set again unchanged still resets the cached source
        (socket.c wg_socket_set_peer_endpoint: the new one has no source)."""
        self.family()  # Unavailable before any complaint about the request
        peer = nest(0,
                    attr(WGPEER_A_PUBLIC_KEY, _key(public_key)),
                    attr(WGPEER_A_FLAGS, struct.pack("=I", WGPEER_F_UPDATE_ONLY)),
                    attr(WGPEER_A_ENDPOINT, sockaddr(address, port)),
                    attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", keepalive)))
        self._device_request(ifname, netlink.NLM_F_REQUEST, WG_CMD_SET_DEVICE,
                             nest(WGDEVICE_A_PEERS, peer))


# ---------------------------------------------------------------- the face


class Client:
    """Every device's peers, through whichever transport answers for it.

    Per device: the UAPI socket when it exists (and answers), else generic
    netlink; the transport that answered is remembered in ``used``.
    ``transports=()`` answers for no device (everything falls back to `wg`).
    """

    def __init__(self, transports=None):
        self.transports = tuple((Uapi(), Genetlink()) if transports is None else transports)
        self.used = {}  # device -> name of the transport that answered last

    def _each(self, ifname, op):
        why = []
        for transport in self.transports:
            try:
                result = op(transport)
            except NoDevice:
                raise
            except Unavailable as e:
                why.append(str(e))
                continue
            self.used[ifname] = transport.name
            return result
        self.used.pop(ifname, None)
        raise Unavailable("; ".join(why) or "%s: no in-process transport" % ifname)

    def read(self, names):
        """({device: [PeerInfo]}, {device: why}) for the devices ``names``.

        A device that does not exist (or is no WireGuard device) is in
        neither; one no transport could answer for is in the second, and
        the caller asks `wg` about it (``wgdump.fallback``).
        """
        return self._read(names, "get")

    def read_devices(self, names):
        """``read`` with a Device for each device."""
        return self._read(names, "device")

    def _read(self, names, method):
        found, failed = {}, {}
        for name in names:
            try:
                found[name] = self._each(name, lambda t: getattr(t, method)(name))
            except NoDevice:
                continue
            except WgError as e:
                failed[name] = str(e)
        return found, failed

    def set_peer(self, ifname, public_key, address, port, keepalive):
        """Set one existing peer's endpoint and keepalive.  Raises
        Unavailable (fork `wg` instead), NoDevice or WgError."""
        self._each(ifname, lambda t: t.set_peer(ifname, public_key, address, port, keepalive))

    def close(self):
        for transport in self.transports:
            transport.close()
