"""ICMP echo in process: one request from a raw socket, its answer read in
the daemon's selectors loop.

Forking `ping` is the most expensive thing an idle daemon can do on a small
router, and an idle tunnel is probed once per keepalive interval.  A raw
socket needs CAP_NET_RAW (the daemon runs as root); where it cannot be
opened the shell forks `ping` instead, and says why once.
"""

import os
import socket
import struct

import wgrouter
from wgrouter import model
from wgrouter import runner


class NoRawSocket(wgrouter.Error):
    """cannot open a raw ICMP socket"""


# ICMP (RFC 792) and ICMPv6 (RFC 4443) types.
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
UNREACHABLE = {4: 3, 6: 1}
PAYLOAD = b"wgrouter-probe\0\0"
# IPv6 fixed header, in front of the request an ICMPv6 error quotes.
IPV6_HEADER = 40

_seq = 0


def checksum(data):
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def request(family, ident, seq, payload=PAYLOAD):
    """An echo request.  IPv4's carries its checksum; for ICMPv6 the kernel
    fills it in on a raw IPPROTO_ICMPV6 socket (RFC 3542 3.1), since it
    covers a pseudo-header with the source address the route picks."""
    head = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == 6:
        return head + payload
    return struct.pack("!BBHHH", ECHO_REQUEST[family], 0, checksum(head + payload), ident, seq) + payload


def _icmp(family, data):
    """The ICMP message of a datagram from a raw socket: IPv4's comes with
    its IP header, ICMPv6's without."""
    if family == 4:
        if len(data) < 20:
            return b""
        return data[(data[0] & 0x0F) * 4:]
    return data


def match(family, data, ident, seq):
    """"reply", "unreachable" (an error quoting our request) or None (not ours)."""
    msg = _icmp(family, data)
    if len(msg) < 8:
        return None
    kind, _code = msg[0], msg[1]
    if kind == ECHO_REPLY[family]:
        rid, rseq = struct.unpack("!HH", msg[4:8])
        return "reply" if (rid, rseq) == (ident, seq) else None
    if kind == UNREACHABLE[family]:
        quoted = msg[8:]
        inner = _icmp(4, quoted) if family == 4 else quoted[IPV6_HEADER:]
        if len(inner) >= 8 and inner[0] == ECHO_REQUEST[family] \
                and struct.unpack("!HH", inner[4:8]) == (ident, seq):
            return "unreachable"
    return None


def binding(target, source, device):
    """(address, device) to bind an echo to, the way ping_argv's -I does:
    ``source`` is a device or an address of the target's family; an address
    of the other family gives way to ``device``."""
    if source and model.is_ip(source) and model.family(source) != model.family(target):
        source = device
    if not source:
        return None, None
    if model.is_ip(source):
        return source, None
    return None, source


def _same(family, a, b):
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        return socket.inet_pton(af, a.split("%")[0]) == socket.inet_pton(af, b)
    except OSError:
        return False


class Echo(runner.Watched):
    """One echo request to ``target``, answered in the daemon's loop.

    The shell watches, times out and reaps it as it does a forked `ping`
    (runner.Watched): ``reap()`` gives rc 0 for an answer, 1 with the reason
    else.  Raises NoRawSocket when the socket cannot be opened, OSError when
    the request cannot be sent (no route, refused by the firewall).
    """

    def __init__(self, target, source, device, deadline, finish, on_timeout, name="", group=None):
        global _seq
        super().__init__(deadline, finish, on_timeout, name, group)
        self.family = model.family(target)
        self.target = target
        self.answered = False
        self.error = ""
        if self.family == 4:
            af, proto = socket.AF_INET, socket.IPPROTO_ICMP
        else:
            af, proto = socket.AF_INET6, socket.IPPROTO_ICMPV6
        try:
            self.sock = self.fileobj = socket.socket(af, socket.SOCK_RAW, proto)
        except PermissionError as e:
            raise NoRawSocket("raw %s socket: %s" % ("ICMP" if self.family == 4 else "ICMPv6",
                                                    e.strerror or e)) from None
        try:
            address, bind_device = binding(target, source, device)
            if bind_device:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bind_device.encode() + b"\0")
            if address:
                self.sock.bind((address, 0))
            self.sock.setblocking(False)
            _seq = (_seq + 1) & 0xFFFF
            self.ident, self.seq = os.getpid() & 0xFFFF, _seq
            self.sock.sendto(request(self.family, self.ident, self.seq), (target, 0))
        except OSError:
            self.sock.close()
            raise

    def read(self):
        """Take what the socket holds; False once the request is answered
        (or refused)."""
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                self.error = str(e)
                return False
            got = match(self.family, data, self.ident, self.seq)
            if got == "reply" and _same(self.family, peer[0], self.target):
                self.answered = True
                return False
            if got == "unreachable":
                self.error = "%s unreachable (from %s)" % (self.target, peer[0])
                return False

    def reap(self, kill=False):
        self.sock.close()
        if self.answered:
            return 0, "", ""
        return 1, "", self.error
