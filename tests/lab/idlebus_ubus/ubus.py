"""Stand-in for the python3-ubus binding, talking to tests/lab/idlebus.py.

Put on the lab daemon's path by bench/run.py for the idle measurement with
the object registered (never installed).  The module-level API is
python-ubus's (PyPI ubus 0.1.x, /work/shared/OPENWRT.md): one connection per
process, ``connect``, ``disconnect``, ``get_connected``, ``get_socket_path``,
``add``, ``objects``, ``send``, ``loop``, ``BLOBMSG_TYPE_*``.

What matters for wake-ups is ``loop(timeout)``: the real binding runs
``uloop_run()`` with a uloop timeout that ends the run (python-ubus 0.1.3
``ubus_python.c``, ``ubus_python_loop``), so the thread blocks in one
``epoll_wait`` until a message arrives or the timeout is due, serves what
came and goes on waiting; a served call does not end the turn, and after
ubusd went away the turn still takes its whole timeout (observed,
OPENWRT.md).  Here: one ``select`` on the bus socket for the time left.
``connect`` reads ubusd's greeting with a blocking read, as libubus does
(``libubus-io.c``, ``ubus_reconnect``).  Only the standard library's
``json``, ``select`` and ``socket`` are imported, so the daemon's memory
is not inflated by the stand-in beyond what a small binding would cost.
"""

import json
import select
import socket
import time

# libubox blobmsg.h enum blobmsg_type (as tests/fakebus.py)
BLOBMSG_TYPE_ARRAY = 1
BLOBMSG_TYPE_TABLE = 2
BLOBMSG_TYPE_STRING = 3
BLOBMSG_TYPE_INT64 = 4
BLOBMSG_TYPE_INT32 = 5
BLOBMSG_TYPE_INT16 = 6
BLOBMSG_TYPE_INT8 = 7
BLOBMSG_TYPE_BOOL = 7
BLOBMSG_TYPE_DOUBLE = 8

_INVALID = "ubus error occured: Invalid argument"
_conn = None


class _Handler:
    def __init__(self):
        self.replies = []

    def reply(self, data):
        self.replies.append(data)


class _Connection:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise IOError("Failed to connect to the ubus socket '%s'\n" % path)
        self.buf = b""
        self.lost = False
        self.methods = {}  # object -> {method: callback}
        self.invokes = []
        self.next_id = 0
        if not self._messages(None):  # the greeting, read blocking
            self.sock.close()
            raise IOError("Failed to connect to the ubus socket '%s'\n" % path)

    def _write(self, msg):
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            self.lost = True

    def _messages(self, timeout):
        """What arrives within ``timeout`` s (None: block); [] on timeout or EOF."""
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
        return [json.loads(line) for line in lines if line.strip()]

    def request(self, msg):
        if self.lost:
            raise RuntimeError(_INVALID)
        self.next_id += 1
        mid = self.next_id
        self._write(dict(msg, id=mid))
        while not self.lost:
            for answer in self._messages(5.0):
                if answer.get("id") == mid and answer.get("op") == "done":
                    return answer
                if answer.get("op") == "invoke":
                    self.invokes.append(answer)
        raise RuntimeError(_INVALID)

    def serve(self, msg):
        handler, status = _Handler(), 0
        callback = self.methods.get(msg.get("obj"), {}).get(msg.get("method"))
        if callback is None:
            status = 3  # UBUS_STATUS_METHOD_NOT_FOUND
        else:
            callback(handler, msg.get("args") or {})
        self._write({"op": "reply", "id": msg.get("id"), "status": status,
                     "replies": handler.replies})


def _require():
    if _conn is None:
        raise RuntimeError("You are not connected to ubus.")
    return _conn


def connect(socket_path=None):
    global _conn
    if _conn is not None:
        raise RuntimeError("You are already connected to ubus.")
    _conn = _Connection(socket_path or "/var/run/ubus/ubus.sock")
    return True


def disconnect(deregister=True):
    global _conn
    _require().sock.close()
    _conn = None


def get_connected():
    return _conn is not None


def get_socket_path():
    return _conn.path if _conn is not None else None


def add(name, methods):
    conn = _require()
    answer = conn.request({"op": "add", "name": name})
    if answer.get("error"):
        raise RuntimeError("ubus error occured: %s" % answer["error"])
    conn.methods[name] = {m: spec["method"] for m, spec in methods.items()}
    return True


def objects(path="*"):
    return {name: {} for name in _require().request({"op": "objects", "path": path})["objects"]}


def send(event, data):
    conn = _require()
    if not conn.lost:
        conn._write({"op": "send", "event": event, "data": data})
    return not conn.lost


def loop(timeout=-1):
    """Serve calls for ``timeout`` ms, blocking in between (see above)."""
    conn = _require()
    deadline = None if timeout < 0 else time.monotonic() + timeout / 1000.0
    while True:
        pending, conn.invokes = conn.invokes, []
        for msg in pending:
            conn.serve(msg)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        if conn.lost:
            time.sleep(left if left is not None else 3600.0)
            continue
        conn.invokes.extend(m for m in conn._messages(left) if m.get("op") == "invoke")
