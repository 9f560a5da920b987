"""A stand-in ubusd in its own process, for the lab's daemon.

    python3 -m tests.lab.standin_bus SOCKET_PATH

FakeBus (tests/fakebus.py) is a bus inside the test process; the lab's
daemon is a separate process, and a ubusd restart must break a connection
that lives in that process.  This bus speaks JSON lines over a Unix socket
with the binding stand-in tests/lab/standin_ubus/ubus.py, which the chaos
soak puts on the daemon's path through tests/lab/soakhook.py and the idle
benchmark through bench/run.py.  What it models, from /work/shared/OPENWRT.md
(python-ubus 0.1.3 against ubusd of openwrt/ubus 3cc98db) and the ubus
source:

* an object belongs to the connection that added it, and a second ``add``
  of a name already on the bus fails (``Invalid argument``);
* a connection that goes away (a publisher SIGKILLed) loses its objects at
  once: the name can be added again by a new process; a call it had not
  answered yet fails;
* a restarted ubusd knows no objects: every client must connect and add
  again (what the binding's connection then does is the module's part);
* ubusd greets every client it accepts with a HELLO message that carries
  the client's id, before anything else (ubus ubusd_proto.c,
  ubusd_proto_new_client -> ubusd_send_hello); libubus's connect reads it
  first and gives up on anything else (libubus-io.c, ubus_reconnect), and
  wgrouter's ubusobj checks for it before it connects.
  Here: ``{"op": "hello", "peer": ID}``;
* an object path or event pattern is a name, or a prefix with one trailing
  ``*`` (tests/ubusrules.py ``matches``); each of a listener's patterns
  that matches an event gets the event once, and the sender gets none of
  its own (ubusd_event.c, ubusd_send_event_msg: "do not loop back events";
  observed with python-ubus 0.1.3: two patterns that match, two calls, and
  none for the process's own send);
* an event is sent as a request that ubusd answers (libubus.c,
  ubus_send_event -> ubus_complete_request);
* ubusd unlinks its socket path before it binds a new socket there, and
  again when its loop ends on SIGTERM or SIGINT (ubus ubusd_main.c, main:
  unlink, usock, uloop_run, unlink); a SIGKILLed ubusd leaves its socket
  file behind, refusing connections, until the next one replaces it.

Messages (one JSON object a line): add, objects, call -> invoke -> reply ->
result, send -> event, listen.  The argument checks of a call are the
binding's (tests/ubusrules.py), not the bus's.
"""

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from tests import ubusrules
from tests.lab import topology

MAX_LINE = 1 << 20


class Bus:
    def __init__(self, path):
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.bufs = {}  # conn -> bytes received, not yet a line
        self.objects = {}  # name -> (owner conn, {method: signature})
        self.listeners = {}  # conn -> [patterns]
        self.pending = {}  # (owner, id) -> (caller, caller's id)
        self.next_id = 0
        self.next_client = 0

    def serve(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.path)
        srv.listen(16)
        self.sel.register(srv, selectors.EVENT_READ, None)
        print("listening", flush=True)
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    conn, _ = srv.accept()
                    self.bufs[conn] = b""
                    self.sel.register(conn, selectors.EVENT_READ, "client")
                    self.next_client += 1
                    self._send(conn, {"op": "hello", "peer": self.next_client})
                else:
                    self._read(key.fileobj)

    def _read(self, conn):
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self.bufs[conn] + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > MAX_LINE:
            self._drop(conn)
            return
        self.bufs[conn] = rest
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self._handle(conn, msg)

    def _send(self, conn, msg):
        try:
            conn.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            pass

    def _drop(self, conn):
        # the objects of a connection that went away are gone at once
        self.sel.unregister(conn)
        self.bufs.pop(conn, None)
        self.listeners.pop(conn, None)
        for name in [n for n, (owner, _) in self.objects.items() if owner is conn]:
            del self.objects[name]
        for (owner, rid), (caller, cid) in list(self.pending.items()):
            if owner is conn:
                del self.pending[(owner, rid)]
                self._send(caller, {"op": "result", "id": cid,
                                    "status": ubusrules.STATUS_NOT_FOUND, "replies": []})
        conn.close()

    def _handle(self, conn, msg):
        op, mid = msg.get("op"), msg.get("id")
        if op == "add":
            name = msg.get("name")
            if name in self.objects:
                self._send(conn, {"op": "done", "id": mid, "error": "Invalid argument"})
            else:
                self.objects[name] = (conn, msg.get("methods") or {})
                self._send(conn, {"op": "done", "id": mid})
        elif op == "objects":
            pattern = msg.get("path") or "*"
            found = {n: m for n, (_, m) in self.objects.items() if ubusrules.matches(pattern, n)}
            self._send(conn, {"op": "done", "id": mid, "objects": found})
        elif op == "call":
            target = self.objects.get(msg.get("obj"))
            if target is None:
                self._send(conn, {"op": "result", "id": mid,
                                  "status": ubusrules.STATUS_NOT_FOUND, "replies": []})
                return
            self.next_id += 1
            self.pending[(target[0], self.next_id)] = (conn, mid)
            self._send(target[0], {"op": "invoke", "id": self.next_id, "obj": msg.get("obj"),
                                   "method": msg.get("method"), "args": msg.get("args") or {}})
        elif op == "reply":
            caller = self.pending.pop((conn, mid), None)
            if caller is not None:
                self._send(caller[0], {"op": "result", "id": caller[1],
                                       "status": msg.get("status", 0),
                                       "replies": msg.get("replies") or []})
        elif op == "send":
            event = msg.get("event") or ""
            for other, patterns in self.listeners.items():
                if other is conn:
                    continue  # not looped back
                for pattern in patterns:
                    if ubusrules.matches(pattern, event):
                        self._send(other, {"op": "event", "pattern": pattern, "event": event,
                                           "data": msg.get("data")})
            self._send(conn, {"op": "done", "id": mid})
        elif op == "listen":
            self.listeners.setdefault(conn, []).extend(msg.get("patterns") or [])
            self._send(conn, {"op": "done", "id": mid})


class BusProcess:
    """The stand-in ubusd as a child of the test: start, stop, restart, ask."""

    def __init__(self, lab, path):
        self.lab = lab
        self.path = path
        self.proc = None
        self.restarts = 0
        self.restarted_at = time.time()

    def start(self):
        env = dict(os.environ, PYTHONPATH=topology.REPO)
        self.proc = self.lab.popen("router", sys.executable, "-m", "tests.lab.standin_bus",
                                   self.path, cwd=topology.REPO, env=env,
                                   stdout=subprocess.PIPE,
                                   stderr=open(self.lab.log("standin-ubusd.log"), "a"),
                                   text=True)
        if self.proc.stdout.readline().strip() != "listening":
            raise topology.LabError("stand-in ubusd did not start")

    def stop(self):
        if self.proc is not None:
            self.lab.stop_process(self.proc, sig=signal.SIGKILL)
            self.proc = None

    def restart(self, gap=0.2):
        """ubusd dies and a new one takes the socket (procd restarts it)."""
        self.stop()
        time.sleep(gap)
        self.start()
        self.restarted_at = time.time()
        self.restarts += 1

    def request(self, msg, timeout=3.0):
        """One request from a client of our own; the answer, or None."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.path)
            s.sendall(json.dumps(dict(msg, id=1)).encode() + b"\n")
            f = s.makefile("rb")
            while True:
                line = f.readline()
                if not line:
                    return None
                answer = json.loads(line)
                if answer.get("id") == 1 and answer.get("op") in ("done", "result"):
                    return answer
        except (OSError, ValueError):
            return None
        finally:
            s.close()

    def call(self, obj, method, args=None, timeout=5.0):
        return self.request({"op": "call", "obj": obj, "method": method, "args": args or {}},
                            timeout)

    def wait_object(self, name, timeout, args=None):
        """True once ``name`` is on the bus and answers ``status`` (called
        with ``args``: luci.wgrouter's needs ubus_rpc_session)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.request({"op": "objects", "path": name}, 1.0)
            if answer and name in (answer.get("objects") or {}):
                reply = self.call(name, "status", args, timeout=2.0)
                if reply and reply.get("status") == 0 and reply.get("replies"):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def _unlink_and_exit(path):
    def handler(signum, frame):
        # ubusd_main.c: uloop_run() ends on SIGTERM/SIGINT, then unlink
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os._exit(0)
    return handler


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for _sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_sig, _unlink_and_exit(sys.argv[1]))
    Bus(sys.argv[1]).serve()
