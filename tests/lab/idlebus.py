"""A minimal stand-in ubusd in its own process, for the idle benchmark.

    python3 -m tests.lab.idlebus SOCKET_PATH

The lab daemon is a separate process, so FakeBus (tests/fakebus.py, inside
the test process) cannot be its bus.  This one serves the binding stand-in
tests/lab/idlebus_ubus/ubus.py (put on the daemon's path by bench/run.py)
with JSON lines over a Unix socket.  It models only what the idle
measurement needs, each from /work/shared/OPENWRT.md or the real source:

* every new client is greeted at once (ubus ``ubusd_proto.c``,
  ``ubusd_send_hello``): wgrouter's ubusobj checks for that greeting before
  it connects;
* an object belongs to the connection that added it, a second ``add`` of a
  name on the bus fails with "Invalid argument", and a connection that goes
  away loses its objects at once (observed with python-ubus 0.1.3);
* a call is handed to the object's owner and its reply to the caller.

Messages: add, objects, call -> invoke -> reply -> result.  Argument checks
are not modelled here (FakeBus does that for the unit tests).
"""

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

HELLO = b'{"op": "hello"}\n'
STATUS_NOT_FOUND = 4  # libubus UBUS_STATUS_NOT_FOUND


class Bus:
    def __init__(self, path):
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.bufs = {}
        self.objects = {}  # name -> owner connection
        self.pending = {}  # id given to the owner -> (caller, caller's id)
        self.next_id = 0

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
                    self._send_raw(conn, HELLO)
                else:
                    self._read(key.fileobj)

    def _send_raw(self, conn, data):
        try:
            conn.sendall(data)
        except OSError:
            pass

    def _send(self, conn, msg):
        self._send_raw(conn, json.dumps(msg).encode() + b"\n")

    def _read(self, conn):
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        *lines, self.bufs[conn] = (self.bufs[conn] + data).split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self._handle(conn, msg)

    def _drop(self, conn):
        self.sel.unregister(conn)
        self.bufs.pop(conn, None)
        for name in [n for n, owner in self.objects.items() if owner is conn]:
            del self.objects[name]
        conn.close()

    def _handle(self, conn, msg):
        op, mid = msg.get("op"), msg.get("id")
        if op == "add":
            if msg.get("name") in self.objects:
                self._send(conn, {"op": "done", "id": mid, "error": "Invalid argument"})
            else:
                self.objects[msg.get("name")] = conn
                self._send(conn, {"op": "done", "id": mid})
        elif op == "objects":
            import fnmatch
            found = [n for n in self.objects if fnmatch.fnmatchcase(n, msg.get("path") or "*")]
            self._send(conn, {"op": "done", "id": mid, "objects": found})
        elif op == "call":
            owner = self.objects.get(msg.get("obj"))
            if owner is None:
                self._send(conn, {"op": "result", "id": mid, "status": STATUS_NOT_FOUND})
                return
            self.next_id += 1
            self.pending[self.next_id] = (conn, mid)
            self._send(owner, dict(msg, op="invoke", id=self.next_id))
        elif op == "reply":
            caller = self.pending.pop(mid, None)
            if caller is not None:
                self._send(caller[0], dict(msg, op="result", id=caller[1]))


class BusProcess:
    """The stand-in ubusd as a child of the benchmark, and a client of it."""

    def __init__(self, lab, path):
        self.lab = lab
        self.path = path
        self.proc = None

    def start(self):
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=repo)
        self.proc = self.lab.popen("router", sys.executable, "-m", "tests.lab.idlebus", self.path,
                                   cwd=repo, env=env, stdout=subprocess.PIPE,
                                   stderr=open(self.lab.log("idlebus.log"), "a"), text=True)
        if self.proc.stdout.readline().strip() != "listening":
            raise RuntimeError("stand-in ubusd did not start")

    def stop(self):
        if self.proc is not None:
            self.lab.stop_process(self.proc, sig=signal.SIGKILL)
            self.proc = None

    def request(self, msg, timeout=5.0):
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
                if answer.get("id") == 1:
                    return answer
        except (OSError, ValueError):
            return None
        finally:
            s.close()

    def wait_object(self, name, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.request({"op": "objects", "path": name}, 1.0)
            if answer and name in (answer.get("objects") or []):
                return True
            time.sleep(0.2)
        return False


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    Bus(sys.argv[1]).serve()
