"""The control socket's server: served from one selectors loop, it never
waits for a client; each client has a deadline, and a bad request is
answered with an error and never reaches the handler."""

import json
import selectors
import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st

from tests.test_scenarios import CARRIER_BOUND, daemon_log, wlab  # noqa: F401 (wlab: the fixture)
from wgrouter import control
from wgrouter import runfiles


class Clock:
    """The server's clock, moved by the test: deadlines are logical."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Loop:
    """A Server in a selectors loop that the test turns by hand."""

    def __init__(self, tmp_path, threaded=None, reply=None):
        self.clock = Clock()
        self.logs = []
        self.handled = []
        self.events = []
        self.reply = reply
        self.path = str(tmp_path / "control.sock")
        self.sel = selectors.DefaultSelector()
        self.server = control.Server(self.path, self.handle, threaded=threaded,
                                     log=self.logs.append, clock=self.clock)
        self.server.register(self.sel)

    def handle(self, request):
        self.handled.append(request)
        reply = self.reply if self.reply is not None else {"ok": True, "echo": request}
        return reply, ["event for %s" % request.get("method")]

    def turn(self, timeout=0.0):
        """One loop iteration, as the daemon's: select, callbacks, expire."""
        for key, _ in self.sel.select(timeout):
            self.events.extend(key.data())
        self.server.expire(self.clock())

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        s.settimeout(5)
        self.turn()  # accepted
        return s

    def ask(self, payload):
        """Send raw bytes, turn the loop until the reply line is there."""
        s = self.connect()
        s.sendall(payload)
        buf = b""
        for _ in range(50):
            self.turn(0.05)
            s.setblocking(False)
            try:
                buf += s.recv(65536)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if buf.endswith(b"\n"):
                break
        s.close()
        return json.loads(buf)

    def close(self):
        self.server.close()
        self.sel.close()


@pytest.fixture
def loop(tmp_path):
    lp = Loop(tmp_path)
    yield lp
    lp.close()


def gone(sock):
    """True once the server closed its end (EOF), False while it is open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_a_request_is_answered_and_its_events_returned(loop):
    assert loop.ask(b'{"method": "status"}\n') == {"ok": True, "echo": {"method": "status"}}
    assert loop.events == ["event for status"]
    assert loop.server.clients == {} and loop.server.deadline() is None


def test_a_request_in_pieces_is_kept_until_its_line_is_complete(loop):
    s = loop.connect()
    s.sendall(b'{"method": ')
    loop.turn(0.05)
    assert loop.handled == [] and not gone(s)
    s.sendall(b'"reapply"}\n')
    loop.turn(1)
    assert loop.handled == [{"method": "reapply"}]
    assert json.loads(s.makefile("rb").readline()) == {"ok": True, "echo": {"method": "reapply"}}
    s.close()


def test_silent_clients_delay_nobody_and_are_dropped_at_their_deadline(loop):
    idle = [loop.connect() for _ in range(3)]
    loop.clock.now = 1.5
    assert loop.server.deadline() == control.CLIENT_TIMEOUT  # the earliest, for the loop's timeout
    # another client is answered at once, while the silent ones wait
    assert loop.ask(b'{"method": "status"}\n')["ok"]
    assert loop.clock.now == 1.5 and not any(gone(s) for s in idle)
    loop.clock.now = control.CLIENT_TIMEOUT
    loop.turn()
    assert all(gone(s) for s in idle)
    assert loop.server.clients == {} and loop.server.deadline() is None
    dropped = [line for line in loop.logs if "sent no complete request" in line]
    assert len(dropped) == 3 and "pid " in dropped[0]
    for s in idle:
        s.close()


def test_a_client_that_does_not_read_its_reply_never_blocks_the_loop(tmp_path):
    big = {"blob": "x" * (8 * 1024 * 1024)}  # far more than a socket buffer holds
    loop = Loop(tmp_path, reply=big)
    try:
        s = loop.connect()
        s.sendall(b'{"method": "status"}\n')
        loop.turn(1)  # returns: the reply is buffered, not waited on
        (client,) = loop.server.clients.values()
        assert client.out and len(client.out) < len(json.dumps(big))
        # meanwhile others are served
        loop.reply = None
        assert loop.ask(b'{"method": "status"}\n')["ok"]
        loop.clock.now = 10.0
        loop.turn()
        assert loop.server.clients == {}
        assert any("did not take its reply" in line for line in loop.logs), loop.logs
        s.close()
    finally:
        loop.close()


def test_a_slow_reader_gets_the_whole_reply_in_pieces(tmp_path):
    big = {"blob": "y" * (2 * 1024 * 1024)}
    loop = Loop(tmp_path, reply=big)
    try:
        s = loop.connect()
        s.sendall(b'{"method": "status"}\n')
        got = b""
        while not got.endswith(b"\n"):
            loop.turn(0.1)
            got += s.recv(65536)
        assert json.loads(got) == big
        loop.turn()
        assert loop.server.clients == {}
        s.close()
    finally:
        loop.close()


@pytest.mark.parametrize("payload, says", [
    (b"{not json\n", "bad request"),
    (b"\xff\xfe\n", "bad request"),
    (b"[1, 2]\n", "JSON object"),
    (b'"status"\n', "JSON object"),
    (b"[" * 3000 + b"\n", "nested too deeply"),
])
def test_a_bad_request_is_answered_with_an_error_and_logged(loop, payload, says):
    reply = loop.ask(payload)
    assert says in reply["error"], reply
    assert loop.handled == [] and loop.events == []
    assert len(loop.logs) == 1 and "bad request from pid" in loop.logs[0]


def test_a_request_over_the_bound_is_cut_and_refused(loop):
    s = loop.connect()
    s.sendall(b'{"method": "' + b"a" * (2 * control.REQUEST_MAX))
    loop.turn(0.1)
    reply = json.loads(s.makefile("rb").readline())
    assert "longer than %d bytes" % control.REQUEST_MAX in reply["error"]
    assert loop.handled == []
    assert any("cut and refused" in line for line in loop.logs)
    s.close()


def test_a_request_without_newline_is_taken_at_end_of_file(loop):
    s = loop.connect()
    s.sendall(b'{"method": "status"}')
    s.shutdown(socket.SHUT_WR)
    loop.turn(0.1)
    assert json.loads(s.makefile("rb").readline())["ok"]
    s.close()


def test_a_client_that_connects_and_leaves_costs_nothing(loop):
    s = loop.connect()
    s.close()
    loop.turn(0.1)
    assert loop.server.clients == {} and loop.handled == [] and loop.logs == []


def test_a_failing_handler_is_an_error_reply(loop):
    def boom(request):
        raise RuntimeError("engine broke")
    loop.server.handle = boom
    assert loop.ask(b'{"method": "status"}\n') == {"error": "request failed: engine broke"}
    assert any("engine broke" in line for line in loop.logs)


def test_clients_over_the_limit_are_refused_and_the_others_served(loop, monkeypatch):
    monkeypatch.setattr(control, "CLIENTS_MAX", 3)
    idle = [loop.connect() for _ in range(3)]
    extra = loop.connect()
    assert gone(extra) and len(loop.server.clients) == 3
    assert sum("refusing more" in line for line in loop.logs) == 1
    for s in idle:
        s.close()
    loop.turn(0.05)
    assert loop.ask(b'{"method": "status"}\n')["ok"]
    extra.close()


def test_a_threaded_method_answers_from_its_thread(tmp_path):
    started = threading.Event()
    release = threading.Event()

    def slow(request):
        started.set()
        release.wait(5)
        return {"report": request["method"]}

    loop = Loop(tmp_path, threaded={"diagnose": slow})
    try:
        s = loop.connect()
        s.sendall(b'{"method": "diagnose"}\n')
        loop.turn(0.1)
        assert started.wait(5)
        assert loop.server.clients == {}  # off the loop while the report runs
        assert loop.ask(b'{"method": "status"}\n')["ok"]  # the loop goes on meanwhile
        release.set()
        assert json.loads(s.makefile("rb").readline()) == {"report": "diagnose"}
        assert loop.handled == [{"method": "status"}]
        s.close()
    finally:
        loop.close()


def test_the_blocking_client_works_from_another_thread(loop):
    """The ubus handlers call control.request from the ubus thread."""
    stop = threading.Event()
    root = loop.path[:-len("control.sock")]

    def serve():
        while not stop.is_set():
            loop.turn(0.05)

    # request() finds the socket under root; point CONTROL there for the test
    t = threading.Thread(target=serve)
    t.start()
    try:
        import unittest.mock
        with unittest.mock.patch.object(runfiles, "CONTROL", "control.sock"):
            replies = [control.request(root, {"method": "switch", "wan": "wanb"}) for _ in range(5)]
    finally:
        stop.set()
        t.join(5)
    assert replies == [{"ok": True, "echo": {"method": "switch", "wan": "wanb"}}] * 5


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=4))
def test_fuzz_any_bytes_in_pieces_give_one_reply_line_or_none(tmp_path_factory, pieces):
    loop = Loop(tmp_path_factory.mktemp("ctl"))
    try:
        s = loop.connect()
        for piece in pieces:
            try:
                s.sendall(piece)
            except OSError:  # refused and closed already
                break
            loop.turn(0)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        loop.turn(0)
        s.settimeout(1)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        s.close()
        loop.clock.now = 100
        loop.turn(0)
        assert loop.server.clients == {}
        if data:
            reply = json.loads(data)
            assert data.count(b"\n") == 1
            # only a request that is a JSON object reaches the handler
            assert ("error" in reply) == (loop.handled == [])
        else:
            assert loop.handled == []
    finally:
        loop.close()


# ------------------------------------------------------------ lab


@pytest.mark.lab
def test_idle_control_clients_do_not_delay_a_failover(wlab):
    """Three local clients connect and say nothing, then wan loses its
    carrier: the failover keeps its usual bound (the loop waited for none
    of them), and the clients are dropped at their deadline."""
    import os
    from tests.lab import scenarios
    lab = wlab()
    path = os.path.join(lab.root, runfiles.CONTROL)
    idle = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            idle.append(s)
        out = scenarios.carrier_loss(lab, lab.probes, lab.cap)
        assert out.recovered, daemon_log(lab)
        assert out.seconds <= CARRIER_BOUND, (out, daemon_log(lab))
        assert lab.cap.leaks(since=out.fault_time - 1) == []
        for s in idle:
            s.settimeout(control.CLIENT_TIMEOUT + 5)
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()
    assert lab.wait_for(lambda: daemon_log(lab).count("sent no complete request") == 3, 5), daemon_log(lab)
    assert scenarios.peer_status(lab)["wan"] == "wanb"
