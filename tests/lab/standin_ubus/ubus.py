"""Stand-in for the python3-ubus binding, talking to tests/lab/standin_bus.py.

Put on the lab daemon's path by tests/lab/soakhook.py (never installed).  The
module-level API is python-ubus's (PyPI ubus 0.1.x; /work/shared/OPENWRT.md):
one connection per process, ``connect``, ``disconnect``, ``get_connected``,
``get_socket_path``, ``add``, ``objects``, ``call``, ``send``, ``listen``,
``loop``, ``BLOBMSG_TYPE_*``.  Argument checks, types and the handler's
``reply`` follow FakeBus (tests/fakebus.py), whose rules were observed with
python-ubus 0.1.3 against a real ubusd.

After the bus goes away (ubusd stopped or restarted), on the connection the
module still holds, as observed with python-ubus 0.1.3 (OPENWRT.md, "After
ubusd goes away"): ``loop(1000)`` keeps taking the whole timeout every turn
(it does not return early); ``send()`` returns False instead of raising;
``objects()`` raises RuntimeError('ubus error occured: Invalid argument');
``get_connected()`` stays True.  Only ``disconnect()`` and ``connect()``
make a new connection.
"""

import functools
import json
import os
import select
import socket
import threading
import time

from tests import fakebus

# The socket the binding connects to without socket_path: the router's
# default, or the soak's stand-in bus.
DEFAULT_SOCKET = os.environ.get("WGROUTER_STANDIN_UBUS") or "/var/run/ubus/ubus.sock"
CALL_TIMEOUT = 5.0

for _name in dir(fakebus.FakeBus):
    if _name.startswith("BLOBMSG_TYPE_"):
        globals()[_name] = getattr(fakebus.FakeBus, _name)
_type_ok = functools.partial(fakebus.FakeBus._type_ok, fakebus.FakeBus)
_INVALID = "ubus error occured: Invalid argument"


class _Handler:
    def __init__(self):
        self.replies = []

    def reply(self, data):
        if not isinstance(data, dict):
            raise TypeError("reply must be a dict")
        self.replies.append(json.loads(json.dumps(data)))


class _Connection:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise IOError("Failed to connect to the ubus socket '%s'" % path)
        self.buf = b""
        self.lost = False
        self._hello()
        self.methods = {}  # object -> {method: (callback, signature)}
        self.listeners = []  # (pattern, callback)
        self.invokes = []  # invocations that arrived while waiting for an answer
        self.events = []
        self.next_id = 0
        self.lock = threading.RLock()

    def _hello(self):
        """Read ubusd's HELLO as libubus does (libubus-io.c, ubus_reconnect:
        a blocking read() of the header, no timeout; anything else, or EOF,
        fails the connect).  A bus that accepts and says nothing blocks
        here, as the real binding does (holding the GIL there)."""
        line = b""
        while not line.endswith(b"\n"):
            try:
                data = self.sock.recv(1)
            except OSError:
                data = b""
            if not data:
                break
            line += data
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if not isinstance(msg, dict) or msg.get("op") != "hello":
            self.sock.close()
            raise IOError("Failed to connect to the ubus socket '%s'" % self.path)

    def close(self):
        self.sock.close()

    def _write(self, msg):
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            self.lost = True

    def _read_some(self, timeout):
        """Messages that arrive within timeout (s); marks the loss on EOF."""
        if self.lost:
            return []
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return []
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.lost = True
            return []
        *lines, self.buf = (self.buf + data).split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def _take(self, msg):
        if msg.get("op") == "invoke":
            self.invokes.append(msg)
        elif msg.get("op") == "event":
            self.events.append(msg)

    def request(self, msg, timeout=CALL_TIMEOUT):
        with self.lock:
            if self.lost:
                raise RuntimeError(_INVALID)
            self.next_id += 1
            mid = self.next_id
            self._write(dict(msg, id=mid))
            deadline = time.monotonic() + timeout
            while not self.lost:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise fakebus.UbusStatus(fakebus.STATUS_TIMEOUT)
                for answer in self._read_some(left):
                    if answer.get("id") == mid and answer.get("op") in ("done", "result"):
                        return answer
                    self._take(answer)
            raise RuntimeError(_INVALID)

    def serve(self, msg):
        status, handler = 0, _Handler()
        table = self.methods.get(msg.get("obj"))
        args = msg.get("args") or {}
        if table is None:
            status = fakebus.STATUS_NOT_FOUND
        elif msg.get("method") not in table:
            status = fakebus.STATUS_METHOD_NOT_FOUND
        else:
            callback, signature = table[msg["method"]]
            if set(args) != set(signature) or not all(
                    _type_ok(signature[a], v) for a, v in args.items()):
                status = fakebus.STATUS_INVALID_ARGUMENT
            else:
                try:
                    callback(handler, args)
                except Exception:  # the binding prints it; the caller sees status 9
                    status = fakebus.STATUS_UNKNOWN_ERROR
        self._write({"op": "reply", "id": msg.get("id"), "status": status,
                     "replies": handler.replies if status == 0 else []})


_conn = None


def _require():
    if _conn is None:
        raise RuntimeError("You are not connected to ubus.")
    return _conn


def connect(socket_path=None):
    global _conn
    if _conn is not None:
        raise RuntimeError("You are already connected to ubus.")
    _conn = _Connection(socket_path or DEFAULT_SOCKET)
    return True


def disconnect(deregister=True):
    global _conn
    _require().close()
    _conn = None


def get_connected():
    return _conn is not None


def get_socket_path():
    return _conn.path if _conn is not None else None


def add(name, methods):
    conn = _require()
    table = {}
    for method, spec in methods.items():
        if not isinstance(spec, dict) or set(spec) != {"method", "signature"}:
            raise TypeError("method %r needs exactly 'method' and 'signature'" % method)
        table[method] = (spec["method"], dict(spec["signature"]))
    answer = conn.request({"op": "add", "name": name,
                           "methods": {m: sig for m, (_, sig) in table.items()}})
    if answer.get("error"):
        raise RuntimeError("ubus error occured: %s" % answer["error"])
    conn.methods[name] = table
    return True


def objects(path="*"):
    return _require().request({"op": "objects", "path": path}).get("objects") or {}


def call(obj, method, arguments, timeout=0):
    answer = _require().request({"op": "call", "obj": obj, "method": method,
                                 "args": json.loads(json.dumps(arguments))})
    if answer.get("status"):
        raise fakebus.UbusStatus(answer["status"])
    return answer.get("replies") or []


def send(event, data):
    conn = _require()
    if conn.lost:
        return False
    with conn.lock:
        conn._write({"op": "send", "event": event, "data": json.loads(json.dumps(data))})
    return not conn.lost


def listen(*listeners):
    conn = _require()
    conn.listeners.extend(listeners)
    conn.request({"op": "listen", "patterns": [p for p, _ in listeners]})


def loop(timeout=-1):
    """Serve calls and events for ``timeout`` ms (the whole of it, even
    after the bus went away, as observed)."""
    conn = _require()
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise TypeError("an integer is required (timeout in ms)")
    deadline = None if timeout < 0 else time.monotonic() + timeout / 1000.0
    while True:
        left = 3600.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return None
        with conn.lock:
            pending, conn.invokes, events, conn.events = conn.invokes, [], conn.events, []
        for msg in pending:
            conn.serve(msg)
        for msg in events:
            for pattern, callback in conn.listeners:
                callback(msg.get("event"), msg.get("data"))
        if conn.lost:
            time.sleep(min(left, 0.5))
            continue
        with conn.lock:
            for msg in conn._read_some(min(left, 0.2)):
                conn._take(msg)
