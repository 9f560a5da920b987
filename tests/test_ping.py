import selectors
import socket
import struct
import time

import pytest

from tests.fakerunner import FakeRunner
from tests.test_shell import CONFIG, FORKED, KEY, loop
from wgrouter import model
from wgrouter import ping
from wgrouter import shell


def _raw_allowed(family):
    try:
        socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                      socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6).close()
    except OSError:
        return False
    return True


def _ipv4(icmp, src="10.9.0.1"):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                         socket.inet_aton(src), socket.inet_aton("10.9.0.2"))
    return header + icmp


def test_checksum_of_a_request_verifies():
    packet = ping.request(4, 0x1234, 7)
    assert ping.checksum(packet) == 0  # a correct checksum sums to zero
    assert packet[0] == 8 and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert ping.checksum(b"\x01") == ping.checksum(b"\x01\x00")  # odd length padded


def test_icmpv6_request_leaves_the_checksum_to_the_kernel():
    packet = ping.request(6, 1, 2)
    assert packet[0] == 128 and packet[2:4] == b"\0\0"


@pytest.mark.parametrize("family", [4, 6])
def test_match_takes_only_our_reply(family):
    def reply(ident, seq):
        icmp = struct.pack("!BBHHH", ping.ECHO_REPLY[family], 0, 0, ident, seq) + ping.PAYLOAD
        return _ipv4(icmp) if family == 4 else icmp

    assert ping.match(family, reply(5, 9), 5, 9) == "reply"
    assert ping.match(family, reply(5, 8), 5, 9) is None  # an older sequence
    assert ping.match(family, reply(6, 9), 5, 9) is None  # someone else's ping
    assert ping.match(family, ping.request(family, 5, 9) if family == 6 else _ipv4(ping.request(4, 5, 9)),
                      5, 9) is None  # our own request looped back
    assert ping.match(family, b"\x45", 5, 9) is None


def test_match_takes_an_unreachable_quoting_our_request():
    quoted = _ipv4(ping.request(4, 5, 9), src="10.9.0.2")[:28]
    error = _ipv4(struct.pack("!BBHI", 3, 1, 0, 0) + quoted)
    assert ping.match(4, error, 5, 9) == "unreachable"
    assert ping.match(4, error, 5, 10) is None
    quoted6 = b"\0" * ping.IPV6_HEADER + ping.request(6, 5, 9)
    assert ping.match(6, struct.pack("!BBHI", 1, 3, 0, 0) + quoted6, 5, 9) == "unreachable"


@pytest.mark.parametrize("target,source,device,expected", [
    ("10.9.0.1", "10.9.0.2", "wg0", ("10.9.0.2", None)),
    ("fd99::1", "10.9.0.2", "wg0", (None, "wg0")),  # the other family gives way to the device
    ("10.9.0.1", "eth1", None, (None, "eth1")),
    ("fd99::1", "10.9.0.2", None, (None, None)),
    ("10.9.0.1", None, None, (None, None)),
])
def test_binding_follows_ping_argv(target, source, device, expected):
    assert ping.binding(target, source, device) == expected
    argv = shell.ping_argv(target, source, 1.0, device=device)
    assert ("-I" in argv) == (expected != (None, None))


@pytest.fixture
def inproc(tmp_path):
    fake = FakeRunner()
    reports = []
    s = shell.Shell(CONFIG, runner=fake, root=str(tmp_path), wg=FORKED, report=reports.append)
    yield s, fake, reports
    s.stop()


@pytest.mark.parametrize("target,source", [("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "lo"), ("::1", "::1")])
def test_probe_in_process_answers_without_a_child(inproc, target, source):
    if not _raw_allowed(model.family(target)):
        pytest.skip("no raw ICMP socket here (needs CAP_NET_RAW)")
    s, fake, reports = inproc
    sel = selectors.DefaultSelector()
    assert s.execute(model.Probe("wg0", KEY, target, source, 1.0), sel) == []
    assert isinstance(s.children[0], ping.Echo)
    events = loop(s, sel)
    assert events == [model.Event("probe", {"tunnel": "wg0", "peer": KEY, "ok": True})]
    assert fake.spawned == [] and reports == [] and sel.get_map() == {}


def test_wan_probe_in_process_first_answer_wins(inproc):
    if not _raw_allowed(4):
        pytest.skip("no raw ICMP socket here (needs CAP_NET_RAW)")
    s, fake, _ = inproc
    sel = selectors.DefaultSelector()
    assert s.execute(model.ProbeWan("wan", "lo", ("127.0.0.1", "127.0.0.2"), 1.0), sel) == []
    events = loop(s, sel)
    assert events == [model.Event("wan_probe", {"wan": "wan", "ok": True, "family": 4})]
    assert fake.spawned == [] and s.children == []


def test_unanswered_echo_times_out_at_its_timeout(inproc):
    if not _raw_allowed(4):
        pytest.skip("no raw ICMP socket here (needs CAP_NET_RAW)")
    s, fake, _ = inproc
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    s.execute(model.Probe("wg0", KEY, "127.0.0.1", "lo", 0.5), sel)
    # no forked ping's whole-second -W and start-up grace in the deadline
    assert s.deadline() - s.clock() <= 0.5 + 0.05
    (ev,) = s.expire(s.clock() + 0.6)  # before the loop reads the answer
    assert (ev.kind, ev.data["ok"]) == ("probe", False) and "timed out" in ev.data["error"]
    assert s.children == [] and sel.get_map() == {} and time.monotonic() - start < 0.5


def test_a_request_that_cannot_be_sent_fails_at_once(inproc):
    if not _raw_allowed(4):
        pytest.skip("no raw ICMP socket here (needs CAP_NET_RAW)")
    s, fake, _ = inproc
    sel = selectors.DefaultSelector()
    (ev,) = s.execute(model.Probe("wg0", KEY, "10.9.0.1", "nosuchdev0", 1.0), sel)
    assert (ev.kind, ev.data["ok"]) == ("probe", False) and ev.data["error"]
    (ev,) = s.execute(model.ProbeWan("wan", "nosuchdev0", ("1.1.1.1",), 1.0), sel)
    assert (ev.kind, ev.data["ok"]) == ("wan_probe", False) and "1.1.1.1: " in ev.data["error"]
    assert s.children == [] and fake.spawned == []


def test_raw_socket_refused_forks_ping_and_says_so_once(inproc, monkeypatch):
    s, fake, reports = inproc

    def refused(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(ping.socket, "socket", refused)
    sel = selectors.DefaultSelector()
    s.execute(model.Probe("wg0", KEY, "10.9.0.1", None, 1.0), sel)
    s.execute(model.ProbeWan("wan", "eth1", ("1.1.1.1",), 1.0), sel)
    assert fake.spawned == [["ping", "-c", "1", "-W", "1", "-I", "wg0", "10.9.0.1"],
                            ["ping", "-c", "1", "-W", "1", "-I", "eth1", "1.1.1.1"]]
    assert reports == ["probe wg0 10.9.0.1: raw ICMP socket: Operation not permitted; "
                       "probes fork ping from now on"]
    loop(s, sel)
