"""WireGuard over TCP (wgrouter/relay.py): the framing byte for byte, the
client and the server on loopback (no root, no lab)."""

import contextlib
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from wgrouter import relay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wg(kind, size):
    """A WireGuard-shaped message: type, three zero bytes, filler."""
    return bytes([kind, 0, 0, 0]) + os.urandom(size - 4)


def initiation():
    return wg(relay.WG_INITIATION, 148)


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    return pred()


class Logs(list):
    def __call__(self, msg):
        self.append(msg)

    def has(self, text):
        return any(text in line for line in self)


def udp_socket(timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


@pytest.fixture
def target():
    """The WireGuard server's socket the relay server forwards to."""
    s = udp_socket()
    yield s
    s.close()


@contextlib.contextmanager
def serving(target, listen=("127.0.0.1", 0), **kw):
    """A RelayServer on ``listen`` forwarding to ``target``, served from a
    thread while in the block; its log lines in ``.logs``."""
    logs = Logs()
    srv = relay.RelayServer([listen], target.getsockname(), log=logs, **kw)
    srv.logs = logs
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.stop()
        t.join(5)
        srv.close()


@pytest.fixture
def server(target):
    with serving(target, recv_timeout=30) as srv:
        yield srv


@pytest.fixture
def relays():
    logs = Logs()
    r = relay.Relays(keepalive=25, backoff_base=0.1, backoff_max=0.4, rng=random.Random(1), log=logs)
    r.logs = logs
    yield r
    r.close()


# ---------------------------------------------------------------- framing


def test_framing_byte_for_byte():
    assert relay.frame(b"abc") == b"\x00\x03abc"
    assert relay.frame(b"") == b"\x00\x00"
    assert relay.frame(b"x" * 300) == b"\x01\x2c" + b"x" * 300
    assert relay.frame(b"y" * 0xFFFF)[:2] == b"\xff\xff"
    with pytest.raises(relay.RelayError):
        relay.frame(b"z" * 0x10000)


def test_decoder_several_datagrams_in_one_segment_and_one_split_across_segments():
    a, b, c = b"first", b"", b"\x04\x00\x00\x00" + bytes(range(40))
    stream = b"\x00\x05first" + b"\x00\x00" + b"\x00\x2c" + c
    assert stream == relay.frame(a) + relay.frame(b) + relay.frame(c)
    assert relay.Decoder().feed(stream) == [a, b, c]
    # byte by byte: the length prefix itself split, then the body
    d = relay.Decoder()
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i:i + 1])
    assert got == [a, b, c] and d.pending == 0
    # a segment that ends inside a datagram keeps it for the next
    d = relay.Decoder()
    assert d.feed(stream[:12]) == [a, b]
    assert d.pending == 3
    assert d.feed(stream[12:]) == [c]


def test_decoder_refuses_a_frame_longer_than_the_largest_wireguard_packet():
    d = relay.Decoder()
    assert d.feed(struct.pack(">H", relay.MAX_FRAME) + b"\x04") == []  # the largest: waits for its body
    with pytest.raises(relay.FrameTooLong) as e:
        relay.Decoder().feed(struct.pack(">H", relay.MAX_FRAME + 1))
    assert "longer than the largest WireGuard packet" in str(e.value)
    # an HTTP server answering: "HT" is a length of 18516
    with pytest.raises(relay.FrameTooLong) as e:
        relay.Decoder().feed(b"HTTP/1.1 400 Bad Request\r\n")
    assert "18516" in str(e.value) and "HTTP" in str(e.value)


def test_wireguard_messages():
    assert relay.wireguard_type(initiation()) == 1
    assert relay.wireguard_type(wg(2, 92)) == 2
    assert relay.wireguard_type(wg(3, 64)) == 3
    assert relay.wireguard_type(wg(4, 32)) == 4
    assert relay.wireguard_type(wg(4, 1452)) == 4
    assert relay.wireguard_type(wg(1, 149)) is None  # wrong size for an initiation
    assert relay.wireguard_type(b"\x04\x01\x00\x00" + bytes(28)) is None  # reserved bytes
    assert relay.wireguard_type(wg(5, 64)) is None
    assert relay.wireguard_type(b"") is None
    assert relay.wants_answer(initiation()) and relay.wants_answer(wg(4, 48))
    assert not relay.wants_answer(wg(4, 32))  # a keepalive
    assert relay.MAX_FRAME == 9032


def test_backoff_has_the_core_shape():
    assert [relay.backoff(n, 2, 300) for n in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    rng = random.Random(7)
    for n in range(12):
        full = min(2 * 2 ** n, 300)
        assert 0.8 * full <= relay.backoff(n, 2, 300, rng) <= full


def test_parse_hostport():
    assert relay.parse_hostport("192.0.2.1:443") == ("192.0.2.1", 443)
    assert relay.parse_hostport("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert relay.parse_hostport("vpn.example.net:5001") == ("vpn.example.net", 5001)
    for bad in ("192.0.2.1", "host:0", "host:x", "[::1]", "[::1]x"):
        with pytest.raises(ValueError):
            relay.parse_hostport(bad)


# ---------------------------------------------------------------- end to end


def start(relays, server, device=None):
    port = relays.start("wg0/peer", server.addresses[0], device)
    wait_for(lambda: relays.status("wg0/peer").connected)
    return ("127.0.0.1", port)


def test_datagrams_pass_both_ways(relays, server, target):
    local = start(relays, server)
    st = relays.status("wg0/peer")
    assert (st.transport, st.relay, st.local, st.state) == (
        "tcp-relay", "127.0.0.1:%d" % server.addresses[0][1], "%s:%d" % local, "connected")
    peer = udp_socket()
    sent = [initiation()] + [wg(4, 32 + 16 * i) for i in range(50)]
    for d in sent:
        peer.sendto(d, local)
    got = [target.recvfrom(65535) for _ in sent]
    assert [d for d, _ in got] == sent
    relay_udp = got[0][1]
    assert all(addr == relay_udp for _, addr in got)
    replies = [wg(2, 92)] + [wg(4, 1452) for _ in range(20)]
    for d in replies:
        target.sendto(d, relay_udp)
    assert [peer.recvfrom(65535)[0] for _ in replies] == replies
    st = relays.status("wg0/peer")
    assert st.tx_bytes == sum(map(len, sent)) and st.tx_datagrams == len(sent)
    assert wait_for(lambda: relays.status("wg0/peer").rx_bytes == sum(map(len, replies)))
    assert st.last_error is None and st.connects == 1
    peer.close()


def test_initiation_sent_while_connecting_goes_out_once_connected(relays, target):
    """WireGuard's first handshake arrives before the connection is up: it is
    held and sent on connect, not lost until WireGuard retries 5 s later."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    addr = probe.getsockname()
    probe.close()  # nothing listens there yet: refused, backoff 0.1 s
    port = relays.start("p", addr, None)
    assert wait_for(lambda: relays.status("p").failures >= 1)
    peer = udp_socket()
    first = initiation()
    peer.sendto(first, ("127.0.0.1", port))
    assert wait_for(lambda: relays.status("p").dropped == 1)
    try:
        with serving(target, addr):
            assert target.recvfrom(65535)[0] == first
    finally:
        peer.close()


def test_server_forwards_to_its_target_only(relays, server, target):
    local = start(relays, server)
    peer = udp_socket(timeout=0.5)
    peer.sendto(initiation(), local)
    _, relay_udp = target.recvfrom(65535)
    # someone else sends to the server's UDP socket for this client: not relayed
    stranger = udp_socket()
    stranger.sendto(wg(2, 92), relay_udp)
    with pytest.raises(socket.timeout):
        peer.recvfrom(65535)
    # the target's own reply is
    reply = wg(2, 92)
    target.sendto(reply, relay_udp)
    assert peer.recvfrom(65535)[0] == reply
    # the server's UDP socket is connected to the target, so it has no way
    # to send anywhere else: its peer is the target
    assert server.udp_bind == "127.0.0.1"
    (client,) = server.clients.values()
    assert client.udp.getpeername() == target.getsockname()
    stranger.close()
    peer.close()


def tcp_client(server):
    s = socket.create_connection(server.addresses[0], timeout=5)
    return s


def test_server_closes_a_client_with_a_bad_frame_and_only_that_one(server, target):
    good = tcp_client(server)
    long_frame = tcp_client(server)
    not_wg = tcp_client(server)
    assert wait_for(lambda: len(server.clients) == 3)
    long_frame.sendall(struct.pack(">H", relay.MAX_FRAME + 1) + b"\x04\x00\x00\x00")
    not_wg.sendall(relay.frame(b"GET / HTTP/1.1\r\n\r\n" + bytes(20)))
    for s in (long_frame, not_wg):
        s.settimeout(5)
        assert s.recv(10) == b""  # closed by the server
    assert wait_for(lambda: server.logs.has("refused: a frame of 9033 bytes"))
    assert wait_for(lambda: server.logs.has("refused: a datagram of 38 bytes that is no WireGuard message"))
    assert len(server.clients) == 1
    d = initiation()
    good.sendall(relay.frame(d))
    assert target.recvfrom(65535)[0] == d
    for s in (good, long_frame, not_wg):
        s.close()


def test_server_bounds_its_clients(target):
    with serving(target, max_clients=2) as srv:
        a, b = tcp_client(srv), tcp_client(srv)
        assert wait_for(lambda: len(srv.clients) == 2)
        c = tcp_client(srv)
        assert c.recv(10) == b""
        assert wait_for(lambda: srv.refused == 1) and srv.logs.has("refused, 2 clients already")
        for s in (a, b, c):
            s.close()


def test_server_closes_a_client_that_sends_nothing(target):
    with serving(target, recv_timeout=0.3) as srv:
        s = tcp_client(srv)
        assert s.recv(10) == b""
        assert wait_for(lambda: srv.logs.has("closed, nothing received for 0 s"))
        assert srv.clients == {}
        s.close()


# ---------------------------------------------------------------- client faults


class FakeRelay:
    """A TCP server that misbehaves: 'reset' (accept, then RST), 'silent'
    (accept, read, say nothing) or 'long' (answer with a frame too long)."""

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = self.sock.getsockname()
        self.accepted = 0
        self.conns = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            elif self.mode == "long":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                self.conns.append(conn)
            else:
                self.conns.append(conn)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_reset_reconnects_with_backoff(relays):
    fake = FakeRelay("reset")
    try:
        relays.start("p", fake.address, None)
        peer = udp_socket()
        assert wait_for(lambda: fake.accepted >= 3)
        st = relays.status("p")
        assert "reset" in (st.last_error or "") or "closed" in (st.last_error or ""), st.last_error
        assert relays.logs.has("retry in")
        # the delays grow: 0.1, 0.2, 0.4, 0.4 ... minus jitter
        t0 = time.monotonic()
        n0 = fake.accepted
        time.sleep(1.5)
        assert fake.accepted - n0 <= 1.5 / (0.4 * 0.8) + 1
        assert time.monotonic() - t0 >= 1.5
        peer.close()
    finally:
        fake.close()


def test_relay_that_accepts_and_says_nothing_is_left(target):
    fake = FakeRelay("silent")
    logs = Logs()
    r = relay.Relays(keepalive=0.2, stale_after=0.4, backoff_base=0.1, backoff_max=0.2, log=logs)
    try:
        port = r.start("p", fake.address, None)
        assert wait_for(lambda: r.status("p").connected)
        peer = udp_socket()
        peer.sendto(wg(4, 32), ("127.0.0.1", port))  # a keepalive wants no answer
        time.sleep(0.6)
        assert r.status("p").connected and r.status("p").connects == 1
        peer.sendto(initiation(), ("127.0.0.1", port))
        assert wait_for(lambda: "nothing received" in (r.status("p").last_error or ""))
        assert logs.has("while sending; retry in")
        assert wait_for(lambda: fake.accepted >= 2)
        peer.close()
    finally:
        r.close()
        fake.close()


def test_relay_answering_a_frame_too_long_is_refused():
    fake = FakeRelay("long")
    logs = Logs()
    r = relay.Relays(backoff_base=0.1, backoff_max=0.2, log=logs)
    try:
        r.start("p", fake.address, None)
        assert wait_for(lambda: "refused" in (r.status("p").last_error or ""))
        assert "18516" in r.status("p").last_error and "not a udp-over-tcp relay" in r.status("p").last_error
        assert wait_for(lambda: fake.accepted >= 2)  # and it tries again, backing off
    finally:
        r.close()
        fake.close()


def test_move_reconnects_and_stop_closes(relays, server, target):
    local = start(relays, server)
    relays.move("wg0/peer", None)
    assert wait_for(lambda: relays.status("wg0/peer").connects == 2 and relays.status("wg0/peer").connected)
    assert relays.logs.has("because of a move")
    peer = udp_socket()
    d = initiation()
    peer.sendto(d, local)  # the local endpoint did not change
    assert target.recvfrom(65535)[0] == d
    relays.stop("wg0/peer")
    assert relays.status("wg0/peer") is None
    assert wait_for(lambda: server.clients == {})
    peer.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_BINDTODEVICE needs CAP_NET_RAW")
def test_bound_to_the_wan_device(relays, server):
    relays.start("p", server.addresses[0], "nosuchdev0")
    assert wait_for(lambda: "No such device" in (relays.status("p").last_error or ""))
    assert "nosuchdev0" in relays.status("p").last_error
    relays.move("p", "lo")
    assert wait_for(lambda: relays.status("p").connected)
    assert relays.status("p").device == "lo"


def test_runs_alone_on_a_server(tmp_path):
    """relay.py copied alone, run by an isolated python3: stdlib only."""
    shutil.copy(os.path.join(REPO, "wgrouter", "relay.py"), tmp_path / "relay.py")
    r = subprocess.run([sys.executable, "-I", str(tmp_path / "relay.py"), "relay-server", "--help"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=30)
    assert r.returncode == 0 and "--forward" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-I", str(tmp_path / "relay.py"), "relay-server",
                        "--listen", "127.0.0.1:1", "--forward", "example.org:51820"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not an IP address" in r.stderr


def test_cli_relay_client_takes_commands(server, target):
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "wgrouter", "relay-client", "--relay",
                          "127.0.0.1:%d" % server.addresses[0][1]],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        import json
        port = json.loads(p.stdout.readline())["port"]
        peer = udp_socket()
        d = initiation()
        peer.sendto(d, ("127.0.0.1", port))
        assert target.recvfrom(65535)[0] == d
        p.stdin.write("status\n")
        p.stdin.flush()
        st = json.loads(p.stdout.readline())
        assert st["transport"] == "tcp-relay" and st["connected"] and st["tx_bytes"] == 148
        p.stdin.write("stop\n")
        p.stdin.flush()
        assert p.wait(10) == 0
        peer.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
