"""Generated input for every parser of outside input: the hotplug spool, the
run files read at start, netlink messages, DNS answers and UCI files.  No
exception escapes, and nothing is taken (or applied) from what is refused.
The control socket's fuzzing is in test_control.py."""

import json
import socket
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tests.fakerunner import FakeRunner
from tests.test_netlink import addr_payload, link_payload, nlmsg
from wgrouter import apply
from wgrouter import daemon
from wgrouter import model
from wgrouter import netlink
from wgrouter import runfiles
from wgrouter import uci

# Fast enough for every unit run; the bound is examples, never wall time.
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------ hotplug spool

actions = st.sampled_from(runfiles.HOTPLUG_ACTIONS)
names = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_", min_size=1, max_size=12)
devices = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=15).filter(
    runfiles.is_device_name)
good_lines = st.tuples(actions, names, st.none() | devices).map(
    lambda t: (" ".join(w for w in t if w).encode(), t))
# \xff is never UTF-8: a line holding it is always refused
junk_lines = st.tuples(st.binary(max_size=40), st.binary(max_size=40)).map(
    lambda t: (t[0] + b"\xff" + t[1]).replace(b"\n", b""))


def _spool(root, data):
    path = root / runfiles.SPOOL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_spool_any_bytes(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("spool")
    _spool(root, data)
    logs = []
    events = runfiles.read_spool(str(root), log=logs.append)
    for e in events:
        assert e.kind == "hotplug" and e.data["action"] in runfiles.HOTPLUG_ACTIONS
        assert e.data["interface"].isprintable() and e.data["interface"].strip() == e.data["interface"]
        assert "device" not in e.data or runfiles.is_device_name(e.data["device"])
    assert len(logs) <= 1  # bad lines: one log line per read


@FUZZ
@given(st.lists(st.one_of(good_lines.map(lambda g: ("good", g)), junk_lines.map(lambda j: ("junk", j))),
                max_size=30))
def test_fuzz_spool_good_lines_survive_any_junk_between_them(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("spool")
    _spool(root, b"".join((x[0] if kind == "good" else x) + b"\n" for kind, x in lines))
    logs = []
    events = runfiles.read_spool(str(root), log=logs.append)
    want = [x[1] for kind, x in lines if kind == "good"]
    assert [(e.data["action"], e.data["interface"], e.data.get("device")) for e in events] == want
    junk = sum(kind == "junk" for kind, _ in lines)
    assert (len(logs) == 1 and "%d bad line(s)" % junk in logs[0]) if junk else logs == []


# ------------------------------------------------------------ run files

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
tables = st.none() | st.integers(1, 2 ** 32 - 1)
owners = st.lists(st.lists(names, min_size=2, max_size=2), max_size=3)


@st.composite
def route_records(draw):
    address, table = draw(addresses), draw(tables)
    return apply.State.key(address, table), {
        "address": address, "table": table, "device": draw(devices),
        "gateway": draw(st.none() | addresses), "owners": draw(owners)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=4),
    max_leaves=12)


@st.composite
def bad_route_records(draw):
    """A record as written, with one field made wrong (or a key that does
    not match it)."""
    key, record = draw(route_records())
    field = draw(st.sampled_from(["address", "table", "device", "gateway", "owners", "key", "type"]))
    if field == "key":
        return key + " ", record
    if field == "type":
        return key, draw(st.none() | st.integers() | st.text() | st.lists(st.integers()))
    wrong = {"address": st.text(max_size=20).filter(lambda t: not model.is_ip(t)) | st.integers(),
             "table": st.integers(max_value=0) | st.text() | st.floats() | st.booleans(),
             "device": st.integers() | st.lists(st.text()),
             "gateway": st.integers() | st.lists(st.text()),
             "owners": st.text() | st.lists(st.integers(), min_size=1) | st.lists(
                 st.lists(names, min_size=3, max_size=3), min_size=1)}[field]
    record[field] = draw(wrong)
    if field in ("address", "table") and isinstance(record["address"], str):
        try:
            key = apply.State.key(record["address"], record["table"])
        except TypeError:
            pass
    return key, record


def _cleanup_calls(path):
    fake = FakeRunner()
    applier = apply.Applier(fake, str(path))
    applier.cleanup()
    return fake.calls, applier.state.problems


@FUZZ
@given(st.lists(route_records(), max_size=4), st.lists(bad_route_records(), max_size=4))
def test_fuzz_applied_json_only_valid_records_are_acted_on(tmp_path_factory, good, bad):
    good = dict(good)
    records = dict(bad)
    assume(not set(records) & set(good))
    records.update(good)
    path = tmp_path_factory.mktemp("state") / "applied.json"
    path.write_text(json.dumps({"routes": records, "rules": {}}))
    calls, problems = _cleanup_calls(path)
    # a delete for each valid record, nothing for the refused ones
    assert sorted(calls) == sorted(
        apply.route_del_argv(r["address"], r["table"], r.get("proto", apply.LEGACY_PROTO),
                             device=r.get("device"), gateway=r.get("gateway"))
        for r in good.values())
    assert bool(problems) == bool(bad)


@FUZZ
@given(st.one_of(st.binary(max_size=2000), json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_applied_json_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("state") / "applied.json"
    path.write_bytes(data)
    calls, problems = _cleanup_calls(path)
    for argv in calls:  # whatever ran names a real address
        (host,) = [a for a in argv if "/" in a]
        assert model.is_ip(host.rsplit("/", 1)[0])


def test_a_corrupt_applied_json_is_logged_and_ignored(tmp_path, capsys, monkeypatch):
    import signal
    from tests.test_core import make_config
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the test's own handlers stay
    monkeypatch.setattr(signal, "set_wakeup_fd", lambda *a, **k: -1)
    (tmp_path / "var/run/wgrouter").mkdir(parents=True)
    (tmp_path / "var/run/wgrouter/applied.json").write_bytes(b'{"routes": {"x": 1}, "rules": []}')
    (tmp_path / "var/run/wgrouter/devices.json").write_bytes(b"\xff\xfe{")
    d = daemon.Daemon(root=str(tmp_path), cfg=make_config(), use_ubus=False)
    try:
        d._setup()
    finally:
        d._shutdown()
    err = capsys.readouterr().err
    assert "applied.json: 1 route record(s) ignored" in err and "applied.json: rules ignored" in err, err
    assert "devices.json ignored" in err, err


@FUZZ
@given(st.one_of(st.binary(max_size=500),
                 st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(
                     lambda v: json.dumps(v).encode())))
def test_fuzz_learned_devices(tmp_path_factory, data):
    from wgrouter import shell
    from tests.test_shell import CONFIG
    root = tmp_path_factory.mktemp("dev")
    (root / "var/run/wgrouter").mkdir(parents=True)
    (root / runfiles.DEVICES).write_bytes(data)
    s = shell.Shell(CONFIG, runner=FakeRunner(), root=str(root), state_path=str(root / "applied.json"))
    assert all(isinstance(d, str) and runfiles.is_device_name(d) for d in s.learned.values())
    try:
        raw = json.loads(data)
    except ValueError:
        raw = None
    if isinstance(raw, dict):
        assert s.learned == {k: v for k, v in raw.items() if isinstance(v, str) and runfiles.is_device_name(v)}
        assert bool(s.problems) == (len(s.learned) < len(raw))
    else:
        assert s.learned == {} and s.problems


# ------------------------------------------------------------ netlink

PARSERS = [netlink.parse_link, netlink.parse_addr, netlink.parse_route]


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(PARSERS))
def test_fuzz_netlink_payload_parses_or_is_malformed(payload, parse):
    try:
        out = netlink.parse_one(parse, payload)
    except netlink.Malformed:
        return
    assert isinstance(out, dict)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_netlink_datagram(data):
    for mtype, _flags, _seq, payload in netlink.messages(data):
        assert isinstance(mtype, int) and isinstance(payload, bytes)
    try:
        netlink.collect([data], 1, netlink.parse_route)
    except netlink.NetlinkError:
        pass


@FUZZ
@given(st.lists(st.one_of(st.tuples(st.integers(1, 9999), st.just(True)),
                          st.tuples(st.binary(max_size=7), st.just(False))), max_size=12))
def test_fuzz_netlink_good_messages_survive_malformed_ones(monkeypatch, batch):
    monkeypatch.setattr(netlink, "report", None)
    data = b"".join(nlmsg(netlink.RTM_NEWADDR, addr_payload(x, "10.0.0.1") if good else x)
                    for x, good in batch)
    got = netlink.collect([data, nlmsg(netlink.NLMSG_DONE, b"\0\0\0\0")], 1, netlink.parse_addr)
    assert [a["ifindex"] for a in got] == [x for x, good in batch if good]


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_netlink_monitor_drain(data):
    """Monitor.drain on whatever a datagram holds: a bool, never a raise."""
    class Sock:
        def __init__(self):
            self.queue = [data]

        def recv(self, size):
            if not self.queue:
                raise BlockingIOError
            return self.queue.pop()

    m = netlink.Monitor.__new__(netlink.Monitor)
    m._sock = Sock()
    assert m.drain() in (True, False)


def test_a_link_with_a_malformed_neighbour_is_still_seen(monkeypatch):
    monkeypatch.setattr(netlink, "report", None)
    bad = nlmsg(netlink.RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 8, 0, 0)
                + struct.pack("=HH", 4, netlink.IFLA_CARRIER))
    good = nlmsg(netlink.RTM_NEWLINK, link_payload(7, "wan", 0x11043, 6, 1))
    got = netlink.collect([bad + good + nlmsg(netlink.NLMSG_DONE, b"\0\0\0\0")], 1, netlink.parse_link)
    assert [link["ifname"] for link in got] == ["wan"]


# ------------------------------------------------------------ DNS answers

dns = pytest.importorskip("dns")
import dns.message  # noqa: E402
import dns.rrset  # noqa: E402

from wgrouter import resolve  # noqa: E402


def _response(query):
    r = dns.message.make_response(query)
    r.answer.append(dns.rrset.from_text("vpn.lab.test.", 5, "IN", "CNAME", "x.lab.test."))
    r.answer.append(dns.rrset.from_text("x.lab.test.", 7, "IN", "A", "192.0.2.10", "192.0.2.11"))
    return r


mutations = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8)


def _mutate(wire, changes, cut):
    b = bytearray(wire)
    for pos, value in changes:
        if b:
            b[pos % len(b)] = value
    return bytes(b[:cut]) if cut is not None else bytes(b)


@FUZZ
@given(mutations, st.none() | st.integers(0, 120))
def test_fuzz_dns_answer(changes, cut):
    query = dns.message.make_query("vpn.lab.test", "A")
    data = _mutate(_response(query).to_wire(), changes, cut)
    try:
        response = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return
    try:
        addresses, ttl = resolve.answer(query, response)
    except resolve.ResolveFailed:
        return
    assert addresses and all(model.is_ip(a) for a in addresses) and ttl >= 0


@pytest.fixture(scope="module")
def udp_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    yield s
    s.close()


@settings(FUZZ, max_examples=60)
@given(mutations, st.none() | st.integers(0, 120), st.booleans())
def test_fuzz_dns_query_in_the_loop(udp_server, changes, cut, keep_id):
    """A Query gets a mangled answer: a failed resolve (its error says what
    was wrong) or a resolve to real addresses; never an exception."""
    from tests.test_resolve import run_query
    action = model.Resolve("vpn.lab.test", "wan", "lo", ("127.0.0.1",))
    # an answer that is not ours (a changed id) is waited out: keep that short
    q = resolve.start_query(action, port=udp_server.getsockname()[1], timeout=0.05)
    wire, peer = udp_server.recvfrom(512)
    query = dns.message.from_wire(wire)
    data = _mutate(_response(query).to_wire(), changes, cut)
    if keep_id and len(data) >= 2:
        data = wire[:2] + data[2:]
    udp_server.sendto(data, peer)
    (event,) = run_query(q, timeout=0.1)
    if event.kind == "resolved":
        assert event.data["addresses"] and all(model.is_ip(a) for a in event.data["addresses"])
    else:
        assert event.kind == "resolve_failed" and event.data["error"]


@pytest.mark.parametrize("rdclass, rdata", [
    (42, b"\xc0\x00\x02\x01"),  # a class dnspython keeps as generic data
    (3, b"\x00\x00\x01"),  # CH: a domain (the root) and a 16-bit address
])
def test_an_answer_of_another_class_is_no_address(rdclass, rdata):
    """A type-A record of another class than the question's is no address
    (class 42 used to raise AttributeError in the loop, CH gave a number)."""
    query = dns.message.make_query("vpn.lab.test", "A")
    wire = bytearray(dns.message.make_response(query).to_wire())
    wire[7] = 1  # ANCOUNT 1: one record, type A of class rdclass, 4 bytes of data
    wire += b"\xc0\x0c" + struct.pack("!HHIH", 1, rdclass, 5, len(rdata)) + rdata
    response = dns.message.from_wire(bytes(wire))
    with pytest.raises(resolve.NoRecord):
        resolve.answer(query, response)


@pytest.mark.parametrize("line", [
    '{"addresses": ["not an address"], "ttl": 5}',
    '{"addresses": ["192.0.2.1"], "ttl": "soon"}',
    '{"addresses": [1], "ttl": 5}',
    '{"addresses": ["192.0.2.1"], "ttl": -1}',
])
def test_a_malformed_resolver_reply_is_a_failed_resolve(line):
    finish, _ = resolve._outcome(model.Resolve("vpn.lab.test", "wan", "lo", ()), 1.0)
    (event,) = finish(0, line + "\n", "")
    assert event.kind == "resolve_failed" and "malformed resolver reply" in event.data["error"]


# ------------------------------------------------------------ UCI files

uci_words = st.sampled_from(["config ", "option ", "list ", "package ", "c ", "o ", "'", '"', "\\", "#",
                             ";", "\n", "\r", "\t", " ", "\0", "wan", "b_1", "x-y", "\xe9", "\\\n", "@"])


@FUZZ
@given(st.one_of(st.text(max_size=300), st.lists(uci_words, max_size=60).map("".join)))
def test_fuzz_uci_text(text):
    try:
        sections = uci.parse(text, "/etc/config/network")
    except uci.UciError as e:
        assert str(e).startswith("/etc/config/network:%d: " % e.line) and e.line >= 1
        return
    assert all(isinstance(s, uci.Section) for s in sections)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_uci_file_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("uci") / "wgrouter"
    path.write_bytes(data)
    try:
        uci.load(path)
    except uci.UciError as e:
        assert str(e).startswith("%s:%d: " % (path, e.line))
