"""WireGuard over TCP, in the framing of Mullvad's udp-over-tcp: the framing,
the router's client (one thread, its own selectors loop) and a server.

The framing (mullvad/udp-over-tcp README "Protocol"; src/forward_traffic.rs
``process_udp2tcp`` and ``split_first_datagram``): no handshake; every
datagram goes on the TCP stream preceded by its length as an unsigned 16-bit
big-endian integer.  A TCP segment may hold several datagrams or part of one.

Client: a UDP socket on 127.0.0.1 becomes the WireGuard peer's endpoint
(``wg set IF peer KEY endpoint 127.0.0.1:PORT``); each datagram WireGuard
sends there goes framed over one TCP connection to the relay, bound to a WAN
device, and each frame the relay sends back goes to WireGuard as a datagram.
``Relays`` runs every peer's connection on one thread with its own loop, so
a relay carrying traffic never runs in the daemon's decision loop.

Server (``wgrouter relay-server`` or ``python3 relay.py relay-server``, this
file alone on any Linux host with Python 3): each TCP client gets its own
UDP socket connected to the one forward target, as tcp2udp does
(src/tcp2udp.rs ``process_socket``).  It forwards to that target and nowhere
else.  Mullvad's ``tcp2udp`` serves the same clients.

Standard library only: this file is copied alone onto VPN servers.
"""

import argparse
import dataclasses
import errno
import os
import random
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import typing

try:
    from wgrouter import Error as _Base
except ImportError:  # this file alone on a VPN server
    _Base = Exception


class RelayError(_Base):
    """relay error"""


class FrameTooLong(RelayError):
    """a frame is longer than the largest WireGuard packet"""


# ---------------------------------------------------------------- framing

HEADER = struct.Struct(">H")  # the length prefix: u16, big-endian
# WireGuard's transport message is a 16-byte header (type, receiver index,
# counter), the padded packet and a 16-byte Poly1305 tag; padding never goes
# past the tunnel MTU (wireguard-go device/send.go calculatePaddingSize), so
# for a tunnel MTU m the largest WireGuard packet is m + 32 bytes.
WG_OVERHEAD = 32
# The largest tunnel MTU carried: a jumbo-frame link's 9000 (OpenWrt's
# default tunnel MTU is 1420).  The handshake messages are 148, 92 and 64
# bytes.  udp-over-tcp itself takes any u16 length (MAX_DATAGRAM_SIZE =
# u16::MAX in src/forward_traffic.rs); a longer frame here is no WireGuard
# peer's, e.g. an HTTP server's "HT" read as a length of 18516.
MAX_TUNNEL_MTU = 9000
MAX_FRAME = MAX_TUNNEL_MTU + WG_OVERHEAD
# WireGuard message types and the exact size of the fixed-size ones
# (wireguard-go device/messages.go; the whitepaper, section 5.4).
WG_INITIATION, WG_RESPONSE, WG_COOKIE, WG_DATA = 1, 2, 3, 4
WG_SIZES = {WG_INITIATION: 148, WG_RESPONSE: 92, WG_COOKIE: 64}
WG_KEEPALIVE_SIZE = WG_OVERHEAD  # a data message with an empty packet


def frame(datagram: bytes) -> bytes:
    """One datagram as it goes on the TCP stream: its u16 length, then it."""
    if len(datagram) > 0xFFFF:
        raise RelayError("a datagram of %d bytes does not fit the 16-bit length" % len(datagram))
    return HEADER.pack(len(datagram)) + datagram


class Decoder:
    """Datagrams out of TCP segments as they arrive: ``feed(segment)``
    returns the datagrams that segment completed, keeps a partial one for the
    next, and raises FrameTooLong as soon as a length prefix is over
    ``max_frame`` (the body need not have arrived)."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held for a datagram not complete yet."""
        return len(self._buf)

    def feed(self, data) -> typing.List[bytes]:
        buf = self._buf
        buf += data
        out = []
        i = 0
        while len(buf) - i >= HEADER.size:
            (n,) = HEADER.unpack_from(buf, i)
            if n > self.max_frame:
                head = bytes(buf[i:i + 8])
                del buf[:]
                raise FrameTooLong("a frame of %d bytes is longer than the largest WireGuard packet (%d); "
                                   "stream starts %r: not a udp-over-tcp relay?" % (n, self.max_frame, head))
            end = i + HEADER.size + n
            if end > len(buf):
                break
            out.append(bytes(buf[i + HEADER.size:end]))
            i = end
        if i:
            del buf[:i]
        return out


def wireguard_type(datagram: bytes) -> typing.Optional[int]:
    """The WireGuard message type of a well-formed message (type byte 1-4,
    three zero bytes, the size of its type), else None."""
    if len(datagram) < WG_KEEPALIVE_SIZE or datagram[1:4] != b"\0\0\0":
        return None
    kind = datagram[0]
    if kind == WG_DATA or WG_SIZES.get(kind) == len(datagram):
        return kind
    return None


def wants_answer(datagram: bytes) -> bool:
    """A datagram the other side answers within seconds: a handshake
    initiation (its response), or a data message carrying a packet
    (WireGuard sends a keepalive back within KEEPALIVE_TIMEOUT, 10 s, when it
    has nothing else).  A keepalive alone is answered by nothing."""
    kind = datagram[0] if datagram else None
    return kind == WG_INITIATION or (kind == WG_DATA and len(datagram) > WG_KEEPALIVE_SIZE)


# ---------------------------------------------------------------- timing

# The recovery backoff of the decision core (core.Engine.backoff): base *
# 2**n capped at max, minus up to this share at random, never more.
BACKOFF_JITTER = 0.2
# Seconds a TCP connect may take before it counts as failed: the kernel alone
# would retry SYNs for about two minutes (tcp_syn_retries 6).
CONNECT_TIMEOUT = 10.0
# Floor of "nothing received while sending": a data packet is answered by a
# keepalive after WireGuard's KEEPALIVE_TIMEOUT (10 s), so never less.
STALE_MIN = 15.0
# A handshake initiation held while the connection is being made is sent on
# connect if it is younger than WireGuard's REKEY_TIMEOUT (5 s): that saves
# the wait for WireGuard's own retry.
HOLD_INITIATION = 5.0
# Bytes queued for a TCP socket before its UDP side stops reading: the
# kernel then drops datagrams as a UDP path would, instead of this process
# queueing them (TCP over TCP under loss only gets worse with a deep queue).
OUT_MAX = 256 * 1024
RECV_SIZE = 256 * 1024
UDP_BURST = 64  # datagrams read per wake-up before the loop looks around
# tcp2udp's --tcp-recv-timeout has no default; its shipped tcp2udp.service
# runs with 130 s.  A router keeps its keepalive at 25 s or less.
SERVER_RECV_TIMEOUT = 130.0
SERVER_MAX_CLIENTS = 128


def backoff(n: int, base: float, maximum: float, rng: typing.Optional[random.Random] = None) -> float:
    """Delay after the n-th (0-based) consecutive failure."""
    delay = min(base * (2.0 ** min(n, 60)), maximum)
    if rng is None:
        return delay
    return delay * (1.0 + rng.uniform(-BACKOFF_JITTER, 0.0))


def _log(msg):
    try:
        sys.stderr.write("wgrouter relay: %s\n" % msg)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def parse_hostport(text: str, default_port: typing.Optional[int] = None) -> typing.Tuple[str, int]:
    """'1.2.3.4:443', '[2001:db8::1]:443', 'host:443' -> (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not port):
            raise ValueError("'%s' is not [address]:port" % text)
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise ValueError("'%s' has no port" % text)
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("'%s' has no port between 1 and 65535" % text)
    return host, int(port)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _hostport(addr) -> str:
    host, port = addr[0], addr[1]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _tcp_options(sock, keepalive: float, user_timeout: typing.Optional[float]):
    """TCP_NODELAY (a datagram goes out at once, as tcp2udp's --nodelay),
    TCP keepalive (probes after ``keepalive`` s idle, two lost ones end it)
    and TCP_USER_TIMEOUT (sent data unacknowledged that long ends it).
    udp-over-tcp sets no TCP keepalive (src/tcp_options.rs applies only the
    buffer sizes, SO_MARK and TCP_NODELAY) and leaves liveness to the
    WireGuard keepalive inside; the router's side needs to notice sooner."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(keepalive))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", idle), ("TCP_KEEPCNT", 2)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# ---------------------------------------------------------------- client


@dataclasses.dataclass(frozen=True)
class RelayStatus:
    """One peer's relay, as status shows it."""

    transport: str  # "tcp-relay" (a peer without a relay is "udp")
    relay: str  # "host:port" of the relay
    device: typing.Optional[str]  # WAN device the connection is bound to
    local: str  # "127.0.0.1:PORT", the peer's endpoint
    state: str  # "connecting", "connected", "waiting" (backoff), "stopped"
    connected: bool
    tx_bytes: int  # datagram bytes sent to the relay (WireGuard -> relay)
    rx_bytes: int  # datagram bytes received from the relay
    tx_datagrams: int
    rx_datagrams: int
    dropped: int  # datagrams dropped (not connected, queue full)
    connects: int  # connections made
    failures: int  # consecutive failures, drives the backoff
    last_error: typing.Optional[str]
    retry_in: typing.Optional[float]  # seconds until the next connect attempt


class _Link:
    """One peer's relay connection (owned by the Relays thread)."""

    def __init__(self, peer, relay, device, udp, keepalive, stale_after):
        self.peer = peer
        self.relay = relay  # (address literal, port)
        self.device = device
        self.udp = udp
        self.local = udp.getsockname()
        self.keepalive = keepalive
        self.stale_after = stale_after
        self.tcp = None
        self.state = "waiting"
        self.decoder = Decoder()
        self.out = bytearray()
        self.wg_addr = None  # where WireGuard sends from: frames go back there
        self.held = None  # (time, handshake initiation) while not connected
        self.connect_deadline = None
        self.awaiting_since = None  # first unanswered datagram that wants an answer
        self.retry_at = 0.0
        self.failures = 0
        self.connects = 0
        self.last_error = None
        self.tx_bytes = self.rx_bytes = self.tx_datagrams = self.rx_datagrams = self.dropped = 0
        self.events = {}  # socket -> registered events


class Relays:
    """Every relay connection of the daemon, on one thread with its own
    selectors loop.  The daemon calls start/move/stop/status from its own
    thread; they hand commands to the loop and return at once.

    ``peer`` is any hashable name of a peer (the daemon's (tunnel, key)).
    ``relay`` is (address literal, port): names are resolved before, as
    endpoint names are.
    """

    def __init__(self, keepalive: float = 25.0, backoff_base: float = 2.0, backoff_max: float = 300.0,
                 rng: typing.Optional[random.Random] = None, log=_log, stale_after=None,
                 connect_timeout: float = CONNECT_TIMEOUT, max_frame: int = MAX_FRAME):
        self.keepalive = keepalive
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng if rng is not None else random.Random()
        self.log = log
        self.stale_after = stale_after
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self._links: typing.Dict[typing.Any, _Link] = {}
        self._lock = threading.Lock()
        self._commands = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="wgrouter-relay", daemon=True)
        self._thread.start()

    # ------------------------------------------------ the daemon's side

    def start(self, peer, relay: typing.Tuple[str, int], device: typing.Optional[str], port: int = 0,
              keepalive: typing.Optional[float] = None) -> int:
        """Open 127.0.0.1:``port`` (0: any free port) for the peer and start
        connecting to ``relay`` through ``device``; returns the local port
        to give WireGuard as the peer's endpoint.  A running relay of the
        peer is replaced."""
        self.stop(peer)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError as e:
            udp.close()
            raise RelayError("relay for %s: cannot bind 127.0.0.1:%d: %s" % (peer, port, _why(e)))
        udp.setblocking(False)
        keepalive = self.keepalive if keepalive is None else keepalive
        stale = self.stale_after if self.stale_after is not None else max(2.0 * keepalive, STALE_MIN)
        link = _Link(peer, (relay[0], int(relay[1])), device, udp, keepalive, stale)
        link.decoder = Decoder(self.max_frame)
        self._command(("start", link))
        return link.local[1]

    def move(self, peer, device: typing.Optional[str]) -> None:
        """Reconnect the peer's relay through ``device`` now (a WAN change)."""
        self._command(("move", peer, device))

    def stop(self, peer) -> None:
        """Close the peer's relay: its TCP connection and its local socket."""
        self._command(("stop", peer))

    def status(self, peer=None):
        """RelayStatus of one peer (None if it has no relay), or with no
        argument {peer: RelayStatus} of all."""
        with self._lock:
            now = time.monotonic()
            if peer is not None:
                link = self._links.get(peer)
                return self._status(link, now) if link is not None else None
            return {p: self._status(link, now) for p, link in self._links.items()}

    def close(self) -> None:
        """Stop every relay and the thread."""
        self._command(("close",))
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    # ------------------------------------------------ commands

    def _command(self, cmd):
        with self._lock:
            if not self._running:
                if cmd[0] == "start":
                    cmd[1].udp.close()
                return
            self._commands.append(cmd)
            if cmd[0] == "start":
                self._links[cmd[1].peer] = cmd[1]
            elif cmd[0] == "stop":
                # the peer's status goes at once; the loop closes the sockets
                link = self._links.pop(cmd[1], None)
                self._commands[-1] = ("stop", cmd[1], link)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # a wake-up is already pending

    def _do_commands(self, now):
        with self._lock:
            commands, self._commands = self._commands, []
        for cmd in commands:
            if cmd[0] == "start":
                link = cmd[1]
                self._watch(link, link.udp, selectors.EVENT_READ)
                self.log("relay %s for %s: started on %s" % (_hostport(link.relay), link.peer,
                                                            _hostport(link.local)))
                self._connect(link, now)
            elif cmd[0] == "stop":
                link = cmd[2]
                if link is not None:
                    self._close_tcp(link)
                    self._unwatch(link, link.udp)
                    link.udp.close()
                    link.state = "stopped"
                    self.log("relay %s for %s: stopped" % (_hostport(link.relay), link.peer))
            elif cmd[0] == "move":
                link = self._links.get(cmd[1])
                if link is not None and link.state != "stopped":
                    was = link.device
                    self._close_tcp(link)
                    link.device = cmd[2]
                    link.failures = 0
                    self.log("relay %s for %s: was %s, now %s, because of a move" % (
                        _hostport(link.relay), link.peer, was, cmd[2]))
                    self._connect(link, now)
            elif cmd[0] == "close":
                with self._lock:
                    links, self._links = list(self._links.values()), {}
                    self._running = False
                for link in links:
                    self._close_tcp(link)
                    self._unwatch(link, link.udp)
                    link.udp.close()

    # ------------------------------------------------ the loop

    def _run(self):
        while True:
            now = time.monotonic()
            self._do_commands(now)
            if not self._running:
                break
            timeout = self._timers(now)
            for key, mask in self._sel.select(timeout):
                if key.data is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                link, what = key.data
                if link.state == "stopped" or (what == "tcp" and key.fileobj is not link.tcp):
                    continue  # closed earlier in this round
                try:
                    if what == "udp":
                        self._from_wireguard(link, time.monotonic())
                    elif link.state == "connecting":
                        self._connected(link, time.monotonic())
                    else:
                        if mask & selectors.EVENT_READ:
                            self._from_relay(link, time.monotonic())
                        if mask & selectors.EVENT_WRITE and link.tcp is not None:
                            self._flush(link)
                except FrameTooLong as e:
                    self._fail(link, "refused: %s" % e, time.monotonic())
                except OSError as e:
                    self._fail(link, _why(e), time.monotonic())
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _timers(self, now) -> typing.Optional[float]:
        """Run what is due; seconds until the next deadline (None: none)."""
        with self._lock:
            links = list(self._links.values())
        nxt = None
        for link in links:
            if link.state == "waiting" and now >= link.retry_at:
                self._connect(link, now)
            if link.state == "connecting" and now >= link.connect_deadline:
                self._fail(link, "no connection within %.0f s" % self.connect_timeout, now)
            if link.state == "connected" and link.awaiting_since is not None \
                    and now >= link.awaiting_since + link.stale_after:
                self._fail(link, "nothing received for %.0f s while sending" % (now - link.awaiting_since), now)
            nxt = _earliest(nxt, self._deadline(link))
        return None if nxt is None else max(0.0, nxt - now)

    @staticmethod
    def _deadline(link) -> typing.Optional[float]:
        if link.state == "waiting":
            return link.retry_at
        if link.state == "connecting":
            return link.connect_deadline
        if link.state == "connected" and link.awaiting_since is not None:
            return link.awaiting_since + link.stale_after
        return None

    # ------------------------------------------------ connection

    def _connect(self, link, now):
        self._close_tcp(link)
        host, port = link.relay
        try:
            tcp = socket.socket(_family(host), socket.SOCK_STREAM)
        except OSError as e:
            self._fail(link, _why(e), now)
            return
        try:
            tcp.setblocking(False)
            if link.device:
                # the WAN's own device: the connection leaves through it or not at all
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.device.encode())
            _tcp_options(tcp, link.keepalive, link.stale_after)
            err = tcp.connect_ex((host, port))
        except OSError as e:
            tcp.close()
            self._fail(link, "%s (device %s)" % (_why(e), link.device), now)
            return
        if err not in (0, errno.EINPROGRESS):
            tcp.close()
            self._fail(link, "%s (device %s)" % (_why(OSError(err, _strerror(err))), link.device), now)
            return
        link.tcp = tcp
        link.state = "connecting"
        link.connect_deadline = now + self.connect_timeout
        self._watch(link, tcp, selectors.EVENT_WRITE)

    def _connected(self, link, now):
        err = link.tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, _strerror(err))
        link.state = "connected"
        link.connects += 1
        link.awaiting_since = None
        link.decoder = Decoder(link.decoder.max_frame)
        self.log("relay %s for %s: connected through %s" % (_hostport(link.relay), link.peer, link.device))
        self._watch(link, link.tcp, selectors.EVENT_READ)
        if link.held is not None:
            t, datagram = link.held
            link.held = None
            if now - t < HOLD_INITIATION:
                self._queue(link, datagram, now)
                self._flush(link)

    def _fail(self, link, reason, now):
        self._close_tcp(link)
        link.state = "waiting"
        link.last_error = reason
        delay = backoff(link.failures, self.backoff_base, self.backoff_max, self.rng)
        link.failures += 1
        link.retry_at = now + delay
        self.log("relay %s for %s through %s: %s; retry in %.1f s" % (
            _hostport(link.relay), link.peer, link.device, reason, delay))

    def _close_tcp(self, link):
        if link.tcp is not None:
            self._unwatch(link, link.tcp)
            link.tcp.close()
            link.tcp = None
        link.out.clear()
        if link.events.get(link.udp) == 0 and link.state != "stopped":
            self._watch(link, link.udp, selectors.EVENT_READ)  # the queue it waited for is gone
        link.awaiting_since = None
        link.connect_deadline = None
        if link.state in ("connecting", "connected"):
            link.state = "waiting"

    # ------------------------------------------------ data

    def _from_wireguard(self, link, now):
        for _ in range(UDP_BURST):
            try:
                datagram, addr = link.udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            if addr != link.wg_addr:
                # udp2tcp answers the first sender for good (src/udp2tcp.rs
                # run: peek_from, then connect); a tunnel restarted on another
                # listen port must not lose its relay, so the latest one here
                if link.wg_addr is not None:
                    self.log("relay %s for %s: WireGuard now sends from %s" % (
                        _hostport(link.relay), link.peer, _hostport(addr)))
                link.wg_addr = addr
            if link.state != "connected":
                link.dropped += 1
                if datagram[:1] == bytes([WG_INITIATION]):
                    link.held = (now, datagram)
                continue
            self._queue(link, datagram, now)
            if len(link.out) >= OUT_MAX:
                break
        if link.tcp is not None and link.state == "connected":
            self._flush(link)

    def _queue(self, link, datagram, now):
        link.out += frame(datagram)
        link.tx_bytes += len(datagram)
        link.tx_datagrams += 1
        if link.awaiting_since is None and wants_answer(datagram):
            link.awaiting_since = now

    def _flush(self, link):
        if link.out:
            try:
                n = link.tcp.send(link.out)
                del link.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
        tcp_events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.out else 0)
        self._watch(link, link.tcp, tcp_events)
        # a full queue stops reading WireGuard: the kernel drops, as on UDP
        self._watch(link, link.udp, selectors.EVENT_READ if len(link.out) < OUT_MAX else 0)

    def _from_relay(self, link, now):
        data = link.tcp.recv(RECV_SIZE)
        if not data:
            self._fail(link, "the relay closed the connection", now)
            return
        for datagram in link.decoder.feed(data):
            link.rx_bytes += len(datagram)
            link.rx_datagrams += 1
            link.awaiting_since = None
            link.failures = 0  # the relay answers: the next failure starts the backoff over
            if link.wg_addr is None:
                link.dropped += 1
                continue
            try:
                link.udp.sendto(datagram, link.wg_addr)
            except (BlockingIOError, InterruptedError):
                link.dropped += 1
            except OSError as e:
                link.dropped += 1
                link.last_error = "to WireGuard: %s" % _why(e)

    # ------------------------------------------------ registrations

    def _watch(self, link, sock, events):
        was = link.events.get(sock, 0)
        if events == was:
            return
        if not events:
            self._sel.unregister(sock)
        elif not was:
            self._sel.register(sock, events, (link, "udp" if sock is link.udp else "tcp"))
        else:
            self._sel.modify(sock, events, (link, "udp" if sock is link.udp else "tcp"))
        link.events[sock] = events

    def _unwatch(self, link, sock):
        self._watch(link, sock, 0)
        link.events.pop(sock, None)

    def _status(self, link, now):
        return RelayStatus(
            transport="tcp-relay",
            relay=_hostport(link.relay),
            device=link.device,
            local=_hostport(link.local),
            state=link.state,
            connected=link.state == "connected",
            tx_bytes=link.tx_bytes,
            rx_bytes=link.rx_bytes,
            tx_datagrams=link.tx_datagrams,
            rx_datagrams=link.rx_datagrams,
            dropped=link.dropped,
            connects=link.connects,
            failures=link.failures,
            last_error=link.last_error,
            retry_in=round(max(0.0, link.retry_at - now), 3) if link.state == "waiting" else None,
        )


def _earliest(a, b):
    return b if a is None else min(a, b)


def _strerror(err):
    return os.strerror(err)


# ---------------------------------------------------------------- server


class _Client:
    def __init__(self, tcp, addr, udp):
        self.tcp = tcp
        self.addr = addr
        self.udp = udp
        self.decoder = None
        self.out = bytearray()
        self.last_rx = 0.0
        self.events = {}
        self.rx_bytes = self.tx_bytes = self.dropped = 0


class RelayServer:
    """The relay's server side: TCP clients in, each with its own UDP socket
    connected to ``forward`` (the one target; replies from anywhere else
    never reach it, as on any connected UDP socket).  A client that sends a
    frame longer than ``max_frame`` or one that is no WireGuard message is
    closed, with its reason logged; the others go on."""

    def __init__(self, listen: typing.Sequence[typing.Tuple[str, int]], forward: typing.Tuple[str, int],
                 recv_timeout: typing.Optional[float] = SERVER_RECV_TIMEOUT,
                 max_clients: int = SERVER_MAX_CLIENTS, udp_bind: typing.Optional[str] = None,
                 max_frame: int = MAX_FRAME, log=_log, keepalive: float = 25.0):
        self.forward = forward
        self.recv_timeout = recv_timeout or None
        self.max_clients = max_clients
        self.max_frame = max_frame
        self.keepalive = keepalive
        self.log = log
        if udp_bind is None:
            udp_bind = ("127.0.0.1" if forward[0].startswith("127.") else
                        "::1" if forward[0] == "::1" else "::" if ":" in forward[0] else "0.0.0.0")
        self.udp_bind = udp_bind
        self.clients: typing.Dict[socket.socket, _Client] = {}
        self.accepted = self.refused = 0
        self._sel = selectors.DefaultSelector()
        self._listeners = []
        self._stop_r, self._stop_w = socket.socketpair()
        self._sel.register(self._stop_r, selectors.EVENT_READ, ("stop", None))
        for host, port in listen:
            s = socket.socket(_family(host), socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                s.close()
                self.close()
                raise RelayError("cannot listen on %s: %s" % (_hostport((host, port)), _why(e)))
            s.listen(128)
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, ("listen", None))
            self._listeners.append(s)

    @property
    def addresses(self):
        return [s.getsockname()[:2] for s in self._listeners]

    def stop(self):
        """Make serve() return (from another thread or a signal handler)."""
        try:
            self._stop_w.send(b"\0")
        except OSError:
            pass

    def close(self):
        for c in list(self.clients.values()):
            self._drop(c, None)
        for s in self._listeners:
            s.close()
        self._listeners = []
        self._sel.close()
        self._stop_r.close()
        self._stop_w.close()

    def serve(self):
        self.log("listening on %s, forwarding to %s/UDP only" % (
            ", ".join("%s/TCP" % _hostport(a) for a in self.addresses), _hostport(self.forward)))
        while True:
            now = time.monotonic()
            timeout = None
            if self.recv_timeout and self.clients:
                first = min(c.last_rx for c in self.clients.values()) + self.recv_timeout
                timeout = max(0.0, first - now)
            for key, mask in self._sel.select(timeout):
                kind, client = key.data
                if kind == "stop":
                    return
                try:
                    if kind == "listen":
                        self._accept(key.fileobj)
                    elif kind == "tcp":
                        if mask & selectors.EVENT_READ:
                            self._from_client(client)
                        if mask & selectors.EVENT_WRITE and client.tcp.fileno() >= 0:
                            self._flush(client)
                    else:
                        self._from_target(client)
                except FrameTooLong as e:
                    self._drop(client, "refused: %s" % e)
                except OSError as e:
                    if client is not None:
                        self._drop(client, _why(e))
                    else:
                        self.log("accept: %s" % _why(e))
                        time.sleep(0.1)  # out of descriptors: do not spin (tcp2udp's cooldown)
            if self.recv_timeout:
                now = time.monotonic()
                for c in [c for c in self.clients.values() if now - c.last_rx > self.recv_timeout]:
                    self._drop(c, "nothing received for %.0f s" % (now - c.last_rx))

    def _accept(self, listener):
        tcp, addr = listener.accept()
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            self.log("%s: refused, %d clients already" % (_hostport(addr), len(self.clients)))
            tcp.close()
            return
        try:
            tcp.setblocking(False)
            _tcp_options(tcp, self.keepalive, None)
            udp = socket.socket(_family(self.forward[0]), socket.SOCK_DGRAM)
        except OSError:
            tcp.close()
            raise
        try:
            udp.setblocking(False)
            udp.bind((self.udp_bind, 0))
            udp.connect(self.forward)
        except OSError as e:
            udp.close()
            tcp.close()
            self.log("%s: cannot open UDP to %s: %s" % (_hostport(addr), _hostport(self.forward), _why(e)))
            return
        c = _Client(tcp, addr, udp)
        c.decoder = Decoder(self.max_frame)
        c.last_rx = time.monotonic()
        self.clients[tcp] = c
        self.accepted += 1
        self._watch(c, tcp, selectors.EVENT_READ)
        self._watch(c, udp, selectors.EVENT_READ)
        self.log("%s: connected, UDP from %s" % (_hostport(addr), _hostport(udp.getsockname())))

    def _from_client(self, c):
        data = c.tcp.recv(RECV_SIZE)
        if not data:
            self._drop(c, None)
            return
        c.last_rx = time.monotonic()
        for datagram in c.decoder.feed(data):
            if wireguard_type(datagram) is None:
                self._drop(c, "refused: a datagram of %d bytes that is no WireGuard message (starts %r)"
                           % (len(datagram), datagram[:4]))
                return
            c.rx_bytes += len(datagram)
            try:
                c.udp.send(datagram)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                c.dropped += 1  # nothing listens there (yet): as UDP would lose it

    def _from_target(self, c):
        for _ in range(UDP_BURST):
            try:
                datagram = c.udp.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from the target
            c.out += frame(datagram)
            c.tx_bytes += len(datagram)
            if len(c.out) >= OUT_MAX:
                break
        self._flush(c)

    def _flush(self, c):
        if c.out:
            try:
                n = c.tcp.send(c.out)
                del c.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
        self._watch(c, c.tcp, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0))
        self._watch(c, c.udp, selectors.EVENT_READ if len(c.out) < OUT_MAX else 0)

    def _drop(self, c, reason):
        if self.clients.pop(c.tcp, None) is None:
            return
        for sock in (c.tcp, c.udp):
            if c.events.get(sock):
                self._sel.unregister(sock)
            sock.close()
        self.log("%s: closed%s (%d bytes in, %d out)" % (
            _hostport(c.addr), ", %s" % reason if reason else "", c.rx_bytes, c.tx_bytes))

    def _watch(self, c, sock, events):
        was = c.events.get(sock, 0)
        if events == was:
            return
        kind = "tcp" if sock is c.tcp else "udp"
        if not events:
            self._sel.unregister(sock)
        elif not was:
            self._sel.register(sock, events, (kind, c))
        else:
            self._sel.modify(sock, events, (kind, c))
        c.events[sock] = events


# ---------------------------------------------------------------- commands


def server_parser(p=None):
    p = p or argparse.ArgumentParser(prog="relay-server", description="WireGuard over TCP: udp-over-tcp server")
    p.add_argument("--listen", action="append", required=True, metavar="ADDR:PORT",
                   help="TCP address to listen on, e.g. 0.0.0.0:443 (repeatable)")
    p.add_argument("--forward", required=True, metavar="ADDR:PORT",
                   help="the WireGuard server's UDP address, e.g. 127.0.0.1:51820: the only target")
    p.add_argument("--recv-timeout", "--tcp-recv-timeout", type=float, default=SERVER_RECV_TIMEOUT,
                   metavar="S", help="close a client that sends nothing this long (0: never; default %(default)s)")
    p.add_argument("--max-clients", type=int, default=SERVER_MAX_CLIENTS, help="default %(default)s")
    p.add_argument("--udp-bind", metavar="ADDR", help="local address of the UDP sockets")
    return p


def server_main(args) -> int:
    try:
        listen = [parse_hostport(a) for a in args.listen]
        forward = parse_hostport(args.forward)
        for host, _ in listen + [forward]:
            socket.inet_pton(_family(host), host)
    except (ValueError, OSError) as e:
        print("relay-server: %s" % (e if isinstance(e, ValueError) else "not an IP address: %s" % e),
              file=sys.stderr)
        return 2
    try:
        server = RelayServer(listen, forward, recv_timeout=args.recv_timeout, max_clients=args.max_clients,
                             udp_bind=args.udp_bind)
    except RelayError as e:
        print("relay-server: %s" % e, file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    try:
        server.serve()
    finally:
        server.close()
    return 0


def client_parser(p=None):
    p = p or argparse.ArgumentParser(prog="relay-client", description="WireGuard over TCP: one relay client")
    p.add_argument("--relay", required=True, metavar="HOST:PORT", help="the relay (resolved once, at start)")
    p.add_argument("--device", help="WAN device to bind the TCP connection to")
    p.add_argument("--port", type=int, default=0, help="local UDP port on 127.0.0.1 (default: any)")
    p.add_argument("--keepalive", type=float, default=25.0)
    p.add_argument("--backoff-base", type=float, default=2.0)
    p.add_argument("--backoff-max", type=float, default=300.0)
    return p


def client_main(args) -> int:
    """One relay in its own process.  Prints {"port": N} on one line, then
    takes commands on stdin, one a line, answering each with one JSON line:
    ``status``, ``move DEVICE``, ``stop``.  Ends on ``stop``, EOF or SIGTERM."""
    import json
    try:
        host, port = parse_hostport(args.relay)
        info = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    except (ValueError, OSError) as e:
        print("relay-client: %s" % e, file=sys.stderr)
        return 2
    relays = Relays(keepalive=args.keepalive, backoff_base=args.backoff_base, backoff_max=args.backoff_max)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        local = relays.start("peer", info[4][:2], args.device, args.port)
    except RelayError as e:
        print("relay-client: %s" % e, file=sys.stderr)
        return 1
    print(json.dumps({"port": local}), flush=True)

    def commands():
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "status":
                reply = dataclasses.asdict(relays.status("peer"))
            elif words[0] == "move" and len(words) == 2:
                relays.move("peer", words[1])
                reply = {"ok": True}
            elif words[0] == "stop":
                break
            else:
                reply = {"error": "unknown command %r" % line.strip()}
            print(json.dumps(reply), flush=True)
        done.set()

    threading.Thread(target=commands, daemon=True).start()
    done.wait()
    relays.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="relay.py", description="WireGuard over TCP (udp-over-tcp framing)")
    sub = p.add_subparsers(dest="command", required=True)
    server_parser(sub.add_parser("relay-server", help="the relay's server side")).set_defaults(
        func=server_main)
    client_parser(sub.add_parser("relay-client", help="one relay client")).set_defaults(func=client_main)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
