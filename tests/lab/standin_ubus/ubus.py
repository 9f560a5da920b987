"""Stand-in for the python3-ubus binding, talking to tests/lab/standin_bus.py.

Put on the lab daemon's path (never installed) by tests/lab/soakhook.py for
the chaos soak and by bench/run.py for the idle measurement with the object
registered.  The module-level API is python-ubus's (PyPI ubus 0.1.x;
/work/shared/OPENWRT.md): one connection per process, ``connect``,
``disconnect``, ``get_connected``, ``get_socket_path``, ``add``, ``objects``,
``call``, ``send``, ``listen``, ``loop``, ``BLOBMSG_TYPE_*``.  Argument
checks, types and the handler's ``reply`` are tests/ubusrules.py's, which
FakeBus (tests/fakebus.py) applies too.

``loop(timeout)`` is what the idle wake-ups depend on: the real binding runs
``uloop_run()`` with a uloop timeout that ends the run (python-ubus 0.1.3
``ubus_python.c``, ``ubus_python_loop``), so the thread blocks in one
``epoll_wait`` until a message arrives or the timeout is due, serves what
came and goes on waiting; a served call does not end the turn.  Here: one
``select`` on the bus socket for the time left.  ``loop(0)`` serves what is
there without waiting (``ubus_handle_event``).

``connect`` reads ubusd's HELLO with a blocking read, no timeout, and fails
on anything else or EOF (libubus-io.c, ``ubus_reconnect``): a bus that
accepts and says nothing blocks it, as the real binding (which holds the
GIL there) is blocked.  ``send`` waits for ubusd's answer (libubus.c,
``ubus_send_event`` -> ``ubus_complete_request``) and returns whether it
went (``ubus_python_send``).

After the bus goes away (ubusd stopped or restarted), on the connection the
module still holds, as observed with python-ubus 0.1.3 (OPENWRT.md, "After
ubusd goes away"): ``loop(1000)`` keeps taking the whole timeout every turn
(it does not return early); ``send()`` returns False instead of raising;
``objects()`` and ``add()`` raise RuntimeError('ubus error occured: Invalid
argument'); ``get_connected()`` stays True.  Only ``disconnect()`` and
``connect()`` make a new connection.

One thread uses the module at a time, as wgrouter's ubusobj does (libubus is
not thread-safe).  Besides the interpreter's start-up set it imports only
``json``, ``select``, ``socket`` and tests/ubusrules.py (which imports
nothing), so that the daemon's memory is not inflated by the stand-in
beyond what a small binding would cost.
"""

import json
import os
import select
import socket
import time

from tests import ubusrules

# The socket the binding connects to without socket_path: the router's
# default, or the soak's stand-in bus.
DEFAULT_SOCKET = os.environ.get("WGROUTER_STANDIN_UBUS") or "/var/run/ubus/ubus.sock"
CALL_TIMEOUT = 5.0  # s

for _name in dir(ubusrules):
    if _name.startswith("BLOBMSG_TYPE_"):
        globals()[_name] = getattr(ubusrules, _name)


class _Handler:
    def __init__(self):
        self.replies = []

    def reply(self, data):
        ubusrules.check_reply(data)
        self.replies.append(json.loads(json.dumps(data)))


class _Connection:
    def __init__(self, path):
        self.path = path
        self.buf = b""
        self.lost = False
        self.methods = {}  # object -> {method: (callback, signature)}
        self.listeners = []  # (pattern, callback)
        self.inbox = []  # what arrived while waiting for an answer: invocations, events
        self.next_id = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
            hello = []
            while not hello and not self.lost:
                hello = self._read(None)
        except OSError:
            hello = []
        if not hello or hello[0].get("op") != "hello":
            self.sock.close()
            # the binding's message ends with a newline (ubus_python.c)
            raise IOError("Failed to connect to the ubus socket '%s'\n" % path)
        self.inbox.extend(hello[1:])

    def close(self):
        self.sock.close()

    def _write(self, msg):
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            self.lost = True

    def _read(self, timeout):
        """The messages that arrive within ``timeout`` s (None: block until
        some data does), {} for a line that is none; [] on a timeout, and on
        EOF, which marks the loss."""
        if self.lost:
            return []
        r, _, _ = select.select([self.sock], [], [], timeout)
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
                msg = json.loads(line)
            except ValueError:
                msg = None
            out.append(msg if isinstance(msg, dict) else {})
        return out

    def request(self, msg, timeout=CALL_TIMEOUT):
        if self.lost:
            raise RuntimeError(ubusrules.INVALID)
        self.next_id += 1
        mid = self.next_id
        self._write(dict(msg, id=mid))
        deadline = time.monotonic() + timeout
        while not self.lost:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ubusrules.UbusStatus(ubusrules.STATUS_TIMEOUT)
            self.inbox.extend(self._read(left))
            for answer in self.inbox:
                if answer.get("id") == mid and answer.get("op") in ("done", "result"):
                    self.inbox.remove(answer)
                    return answer
        raise RuntimeError(ubusrules.INVALID)

    def dispatch(self):
        """Serve the invocations that came, and hand the events to their
        listeners (late answers to requests are dropped)."""
        inbox, self.inbox = self.inbox, []
        for msg in inbox:
            if msg.get("op") == "invoke":
                self._serve(msg)
            elif msg.get("op") == "event":
                for pattern, callback in self.listeners:
                    if pattern == msg.get("pattern"):
                        callback(msg.get("event"), msg.get("data"))

    def _serve(self, msg):
        status, handler = ubusrules.STATUS_OK, _Handler()
        table = self.methods.get(msg.get("obj"))
        args = msg.get("args") or {}
        if table is None:
            status = ubusrules.STATUS_NOT_FOUND
        elif msg.get("method") not in table:
            status = ubusrules.STATUS_METHOD_NOT_FOUND
        else:
            callback, signature = table[msg["method"]]
            if not ubusrules.args_ok(signature, args):
                status = ubusrules.STATUS_INVALID_ARGUMENT
            else:
                try:
                    callback(handler, args)
                except Exception:  # the binding prints it; the caller sees status 9
                    status = ubusrules.STATUS_UNKNOWN_ERROR
        self._write({"op": "reply", "id": msg.get("id"), "status": status,
                     "replies": handler.replies if status == ubusrules.STATUS_OK else []})


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
    table = ubusrules.method_table(methods)
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
        raise ubusrules.UbusStatus(answer["status"])
    return answer.get("replies") or []


def send(event, data):
    conn = _require()
    data = json.loads(json.dumps(data))
    try:
        conn.request({"op": "send", "event": event, "data": data})
    except RuntimeError:  # lost, or no answer: ubus_send_event failed
        return False
    return True


def listen(*listeners):
    conn = _require()
    conn.listeners.extend(listeners)
    conn.request({"op": "listen", "patterns": [p for p, _ in listeners]})


def loop(timeout=-1):
    """Serve calls and events for ``timeout`` ms, blocking in between (the
    whole of it, even after the bus went away, as observed)."""
    conn = _require()
    ubusrules.check_timeout(timeout)
    if timeout == 0:
        conn.inbox.extend(conn._read(0))
        conn.dispatch()
        return None
    deadline = None if timeout < 0 else time.monotonic() + timeout / 1000.0
    while True:
        conn.dispatch()
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        if conn.lost:
            time.sleep(3600.0 if left is None else left)
        else:
            conn.inbox.extend(conn._read(left))
