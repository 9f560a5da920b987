import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.fakerunner import REPO, NetNS, netns_unavailable
from wgrouter import model
from wgrouter import resolve
from wgrouter import shell as shell_mod

dns_message = pytest.importorskip("dns.message")


def free_port():
    # a port free for both UDP and TCP on 127.0.0.1
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


HOSTS = "10.0.0.1 a.test\n10.0.0.2 multi.test\n10.0.0.3 multi.test\n" \
    "2001:db8::5 six.test\n10.0.0.9 dual.test\n2001:db8::9 dual.test\n" + "".join(
    "10.1.%d.%d big.test\n" % (i // 250, i % 250 + 1) for i in range(60)
)


def start_dnsmasq(tmp_path, listen="127.0.0.1", port=None, netns=None):
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    pid_file = tmp_path / "dnsmasq.pid"
    port = port or free_port()
    argv = [
        "dnsmasq", "--no-daemon", "--port", str(port), "--listen-address", listen, "--bind-interfaces",
        "--no-resolv", "--no-hosts", "--addn-hosts", str(hosts), "--local-ttl", "7",
        "--local=/test/", "--cname=alias.test,a.test,5", "--cname=chain.test,alias.test,9",
        "--cname=dangling.test,nowhere.test", "--pid-file=%s" % pid_file, "--user=root", "--group=root",
    ]
    if netns is not None:
        argv = netns.exec_argv(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, port


@pytest.fixture
def dnsmasq(tmp_path):
    if subprocess.run(["which", "dnsmasq"], capture_output=True).returncode != 0:
        pytest.skip("dnsmasq not installed")
    proc, port = start_dnsmasq(tmp_path)
    try:
        wait_dns(port)
        yield port
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def wait_dns(port, server="127.0.0.1"):
    # readiness: dnsmasq answers a query
    for _ in range(100):
        r = child(["--server", server, "--port", str(port), "--timeout", "0.2", "a.test"])
        if r[0] == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("dnsmasq did not come up")


def child(args, netns=None):
    argv = [sys.executable, "-m", "wgrouter.resolve"] + args
    if netns is not None:
        argv = netns.exec_argv(argv)
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, (r.stdout, r.stderr)
    return r.returncode, json.loads(lines[0])


def ask(port, host, *extra):
    return child(["--device", "lo", "--server", "127.0.0.1", "--port", str(port)] + list(extra) + [host])


def test_a_record_and_ttl(dnsmasq):
    assert ask(dnsmasq, "a.test") == (0, {"addresses": ["10.0.0.1"], "ttl": 7})


def test_several_addresses(dnsmasq):
    rc, reply = ask(dnsmasq, "multi.test")
    assert rc == 0 and sorted(reply["addresses"]) == ["10.0.0.2", "10.0.0.3"]


def test_cname_chain_min_ttl(dnsmasq):
    assert ask(dnsmasq, "alias.test") == (0, {"addresses": ["10.0.0.1"], "ttl": 5})
    assert ask(dnsmasq, "chain.test") == (0, {"addresses": ["10.0.0.1"], "ttl": 5})


def test_nxdomain(dnsmasq):
    assert ask(dnsmasq, "missing.test") == (1, {"error": "NXDOMAIN"})


def test_truncated_answer_retried_over_tcp(dnsmasq):
    rc, reply = ask(dnsmasq, "big.test")
    assert rc == 0
    assert len(reply["addresses"]) == 60 and "10.1.0.1" in reply["addresses"]


@pytest.fixture
def silent(dnsmasq):
    """A server at 127.0.0.2, on dnsmasq's port, that never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.2", dnsmasq))
    except OSError as e:
        s.close()
        pytest.skip("cannot bind 127.0.0.2: %s" % e)
    yield s
    s.close()


def test_timeout_then_next_server(dnsmasq, silent):
    rc, reply = child(["--server", "127.0.0.2", "--port", str(dnsmasq), "--timeout", "0.3", "a.test"])
    assert rc == 1 and reply == {"error": "127.0.0.2: timeout"}
    rc, reply = child(["--server", "127.0.0.2", "--server", "127.0.0.1", "--port", str(dnsmasq),
                       "--timeout", "0.3", "a.test"])
    assert (rc, reply) == (0, {"addresses": ["10.0.0.1"], "ttl": 7})


def test_resolv_conf_fallback(dnsmasq, tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch lan\nnameserver 127.0.0.1\n")
    rc, reply = child(["--device", "eth-none", "--resolv-conf", str(conf), "--port", str(dnsmasq), "a.test"])
    assert (rc, reply) == (0, {"addresses": ["10.0.0.1"], "ttl": 7})


def test_no_servers_at_all(tmp_path):
    rc, reply = child(["--resolv-conf", str(tmp_path / "missing"), "a.test"])
    assert rc == 1 and reply == {"error": "no name servers"}


def test_nameservers_parsing(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\nnameserver fe80::1%eth0\noptions ndots:1\nnameserver\n")
    assert resolve.nameservers(str(conf)) == ["192.0.2.53", "fe80::1"]


# ------------------------------------------------------------ answer()


def message(text):
    import dns.message

    return dns.message.from_text(text)


QUERY = "id 1\nopcode QUERY\nrcode NOERROR\nflags RD\n;QUESTION\nwww.example. IN A\n"


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("www.example. 300 IN A 192.0.2.1\nwww.example. 300 IN A 192.0.2.2\n", (["192.0.2.1", "192.0.2.2"], 300)),
        ("www.example. 600 IN CNAME edge.example.\nedge.example. 60 IN A 192.0.2.9\n", (["192.0.2.9"], 60)),
        ("www.example. 30 IN CNAME a.example.\na.example. 90 IN CNAME b.example.\nb.example. 120 IN A 192.0.2.3\n",
         (["192.0.2.3"], 30)),
        # records in any order; unrelated records ignored
        ("other.example. 5 IN A 192.0.2.7\nedge.example. 40 IN A 192.0.2.8\nwww.example. 50 IN CNAME edge.example.\n",
         (["192.0.2.8"], 40)),
    ],
)
def test_answer_follows_cnames(answer, expected):
    query = message(QUERY)
    response = message(QUERY.replace("flags RD", "flags QR RD RA") + ";ANSWER\n" + answer)
    assert resolve.answer(query, response) == expected


@pytest.mark.parametrize(
    "answer,error",
    [
        ("", "no A record for www.example"),
        ("www.example. 60 IN CNAME edge.example.\n", "no A record for www.example"),
        ("www.example. 60 IN CNAME www.example.\n", "no A record for www.example"),
        ("www.example. 60 IN AAAA 2001:db8::1\n", "no A record for www.example"),
    ],
)
def test_answer_without_address(answer, error):
    query = message(QUERY)
    response = message(QUERY.replace("flags RD", "flags QR RD RA") + ";ANSWER\n" + answer)
    with pytest.raises(resolve.ResolveFailed) as e:
        resolve.answer(query, response)
    assert str(e.value) == error


def test_servfail_tries_next():
    calls = []

    def fake_query(host, server, port, device, timeout, rdtype="A"):
        calls.append(server)
        query = message(QUERY)
        rcode = "SERVFAIL" if server == "192.0.2.1" else "NOERROR"
        text = QUERY.replace("flags RD", "flags QR RD RA").replace("NOERROR", rcode)
        if rcode == "NOERROR":
            text += ";ANSWER\nwww.example. 77 IN A 198.51.100.1\n"
        return query, message(text)

    original = resolve._query
    resolve._query = fake_query
    try:
        assert resolve.resolve("www.example", ["192.0.2.1", "192.0.2.2"]) == (["198.51.100.1"], 77)
    finally:
        resolve._query = original
    assert calls == ["192.0.2.1", "192.0.2.2"]


# ------------------------------------------------------------ lab: bound to the WAN


@pytest.mark.lab
def test_query_leaves_through_the_bound_device(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with NetNS() as client, NetNS() as server:
        # client: wan1 reaches the server, wan2 holds the better default route but leads nowhere
        client.ip("link", "add", "wan1", "type", "veth", "peer", "name", "srv0", "netns", server.name)
        client.ip("link", "add", "wan2", "type", "veth", "peer", "name", "void0")
        client.ip("addr", "add", "10.5.0.2/24", "dev", "wan1")
        client.ip("addr", "add", "10.6.0.2/24", "dev", "wan2")
        for dev in ("wan1", "wan2", "void0"):
            client.ip("link", "set", dev, "up")
        client.ip("route", "add", "default", "via", "10.6.0.1", "dev", "wan2", "metric", "10")
        client.ip("route", "add", "default", "via", "10.5.0.1", "dev", "wan1", "metric", "20")
        server.ip("addr", "add", "10.5.0.1/24", "dev", "srv0")
        server.ip("link", "set", "srv0", "up")
        server.ip("addr", "add", "192.0.2.53/32", "dev", "lo")
        server.ip("route", "add", "default", "via", "10.5.0.2")
        proc, port = start_dnsmasq(tmp_path, listen="192.0.2.53", port=53, netns=server)
        try:
            for _ in range(100):
                rc, reply = child(["--device", "wan1", "--server", "192.0.2.53", "--timeout", "0.3", "a.test"], client)
                if rc == 0:
                    break
                time.sleep(0.1)
            assert (rc, reply) == (0, {"addresses": ["10.0.0.1"], "ttl": 7})
            rc, reply = child(["--device", "wan2", "--server", "192.0.2.53", "--timeout", "0.5", "a.test"], client)
            assert rc == 1 and "timeout" in reply["error"]
        finally:
            proc.kill()
            proc.wait()
            proc.stderr.close()


def test_missing_dnspython_is_a_json_error(tmp_path):
    fake = tmp_path / "dns"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named dns')\n")
    argv = [sys.executable, "-m", "wgrouter.resolve", "--server", "127.0.0.1", "a.test"]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"error": resolve.NO_DNSPYTHON + " (No module named dns)"}
    assert "opkg install wgrouter-dns" in resolve.NO_DNSPYTHON


def test_available_says_whether_dnspython_is_there(monkeypatch):
    assert resolve.available()  # installed for the tests
    monkeypatch.setitem(sys.modules, "dns", None)
    assert not resolve.available()


# ------------------------------------------------------- in-process queries


def run_query(q, timeout=3.0):
    """Drive a resolve.Query the way the shell does: select on its socket
    until read() says it is done, then reap and finish."""
    import selectors as sel_mod
    sel = sel_mod.DefaultSelector()
    sel.register(q.fileobj, sel_mod.EVENT_READ)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if sel.select(0.1) and not q.read():
                return q.finish(*q.reap())
        q.reap(kill=True)
        return q.on_timeout()
    finally:
        sel.close()


def test_query_in_process_follows_cnames(dnsmasq):
    action = model.Resolve("chain.test", "wan", "lo", ("127.0.0.1",))
    events = run_query(resolve.start_query(action, port=dnsmasq))
    assert events == [model.Event("resolved", {"host": "chain.test", "wan": "wan",
                                               "addresses": ["10.0.0.1"], "ttl": 5})]


def test_name_without_a_record_is_asked_for_aaaa(dnsmasq):
    action = model.Resolve("six.test", "wan", "lo", ("127.0.0.1",))
    events = run_query(resolve.start_query(action, port=dnsmasq))
    assert events == [model.Event("resolved", {"host": "six.test", "wan": "wan",
                                               "addresses": ["2001:db8::5"], "ttl": 7})]
    assert ask(dnsmasq, "six.test") == (0, {"addresses": ["2001:db8::5"], "ttl": 7})  # diagnose's child


def test_a_record_is_preferred_over_aaaa(dnsmasq):
    action = model.Resolve("dual.test", "wan", "lo", ("127.0.0.1",))
    events = run_query(resolve.start_query(action, port=dnsmasq))
    assert events[0].kind == "resolved" and events[0].data["addresses"] == ["10.0.0.9"]
    assert ask(dnsmasq, "dual.test")[1]["addresses"] == ["10.0.0.9"]


def test_name_with_neither_record_fails(dnsmasq):
    # dangling.test is a CNAME to a name that does not exist in the zone
    action = model.Resolve("dangling.test", "wan", "lo", ("127.0.0.1",))
    events = run_query(resolve.start_query(action, port=dnsmasq))
    assert [e.kind for e in events] == ["resolve_failed"], events


def test_query_in_process_nxdomain(dnsmasq):
    action = model.Resolve("missing.test", "wanb", "lo", ("127.0.0.1",))
    events = run_query(resolve.start_query(action, port=dnsmasq))
    assert [e.kind for e in events] == ["resolve_failed"] and "NXDOMAIN" in events[0].data["error"]


def test_query_in_process_silent_server_times_out_other_answers(dnsmasq, silent):
    only_silent = model.Resolve("a.test", "wan", None, ("127.0.0.2",))
    events = run_query(resolve.start_query(only_silent, port=dnsmasq, timeout=0.3), timeout=0.5)
    assert [e.kind for e in events] == ["resolve_failed"]
    both = model.Resolve("a.test", "wan", None, ("127.0.0.2", "127.0.0.1"))
    events = run_query(resolve.start_query(both, port=dnsmasq))
    assert events[0].kind == "resolved" and events[0].data["addresses"] == ["10.0.0.1"]


AUTO = ("# Interface wan\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nnameserver fe80::1%eth1\nsearch lan\n"
        "# Interface wanb\nnameserver 100.64.0.53\n"
        "# Interface wan6\nnameserver 2001:db8::53\n")


@pytest.mark.parametrize("path", ["tmp/resolv.conf.d/resolv.conf.auto", "tmp/resolv.conf.auto"])
def test_wan_nameservers_from_netifd(tmp_path, path):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(AUTO)
    assert resolve.wan_nameservers("wan", str(tmp_path)) == ["192.0.2.53", "192.0.2.54"]  # link-local left out
    assert resolve.wan_nameservers("wanb", str(tmp_path)) == ["100.64.0.53"]
    assert resolve.wan_nameservers("wan6", str(tmp_path)) == ["2001:db8::53"]
    assert resolve.wan_nameservers("lte", str(tmp_path)) == []


def test_configured_servers_come_before_the_learned_ones(tmp_path):
    auto = tmp_path / "tmp/resolv.conf.d/resolv.conf.auto"
    auto.parent.mkdir(parents=True)
    auto.write_text(AUTO)
    assert resolve.servers_for("wan", ("198.51.100.53",), str(tmp_path)) == ("198.51.100.53",)
    assert resolve.servers_for("wan", (), str(tmp_path)) == ("192.0.2.53", "192.0.2.54")
    assert resolve.servers_for("lte", (), str(tmp_path)) == ()


def test_wan_nameservers_without_the_file(tmp_path):
    assert resolve.wan_nameservers("wan", str(tmp_path)) == []


def test_shell_asks_the_servers_netifd_learned_on_the_wan(dnsmasq, tmp_path):
    import selectors as sel_mod
    from tests.fakerunner import FakeRunner
    auto = tmp_path / "tmp/resolv.conf.d/resolv.conf.auto"
    auto.parent.mkdir(parents=True)
    auto.write_text("# Interface wanb\nnameserver 127.0.0.9\n# Interface wan\nnameserver 127.0.0.1\n")
    cfg = model.Config(model.Settings(), (model.Wan("wan", "lo"),), ())
    s = shell_mod.Shell(cfg, runner=FakeRunner(), root=str(tmp_path), state_path=str(tmp_path / "applied.json"))
    s.resolve_port = dnsmasq
    sel = sel_mod.DefaultSelector()
    assert s.execute(model.Resolve("a.test", "wan", "lo", ()), sel) == []
    events = []
    end = time.monotonic() + 3
    while not events and time.monotonic() < end:
        for key, _ in sel.select(0.1):
            events.extend(key.data())
    assert [e.kind for e in events] == ["resolved"], events
    assert events[0].data["addresses"] == ["10.0.0.1"]


def test_shell_resolves_in_process_without_a_child(dnsmasq):
    import selectors as sel_mod
    from tests.fakerunner import FakeRunner
    cfg = model.Config(model.Settings(), (model.Wan("wan", "lo"),), ())
    fake = FakeRunner()
    s = shell_mod.Shell(cfg, runner=fake, root="/nonexistent", state_path="/nonexistent/applied.json")
    s.resolve_port = dnsmasq
    sel = sel_mod.DefaultSelector()
    assert s.execute(model.Resolve("a.test", "wan", "lo", ("127.0.0.1",)), sel) == []
    assert fake.spawned == []  # no child process
    events = []
    end = time.monotonic() + 3
    while not events and time.monotonic() < end:
        for key, _ in sel.select(0.1):
            events.extend(key.data())
    assert events == [model.Event("resolved", {"host": "a.test", "wan": "wan",
                                               "addresses": ["10.0.0.1"], "ttl": 7})]
    assert s.children == []


@pytest.mark.skipif(not os.environ.get("WGROUTER_EXPECT_DNSPYTHON"),
                    reason="only in the run against OpenWrt's dnspython (make test-openwrt-versions)")
def test_runs_against_the_dnspython_version_asked_for():
    # make test runs this file a second time against OpenWrt 24.10's
    # python3-dns; this says the venv really holds that version.
    import dns.version
    assert dns.version.version == os.environ["WGROUTER_EXPECT_DNSPYTHON"]
