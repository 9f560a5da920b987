"""The control protocol: one JSON request line and its reply on the
daemon's unix socket (runfiles.CONTROL); the client the CLI uses, and the
server the daemon's loop runs."""

import json
import os
import selectors
import socket
import struct
import threading
import time

import wgrouter
from wgrouter import runfiles


class ControlError(wgrouter.Error):
    """wgrouter daemon unreachable"""


def request(root, req, timeout=5.0):
    """Send one JSON request line to the running daemon, return its reply."""
    where = runfiles.path(root, runfiles.CONTROL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(where)
        except OSError:
            raise ControlError("wgrouter is not running (no control socket at %s)" % where)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf.decode())
    except (OSError, ValueError) as e:
        raise ControlError("no answer from wgrouter: %s" % e)
    finally:
        s.close()


# ------------------------------------------------------------------ server

# A request is one JSON line; the CLI's and LuCI's are a few dozen bytes.
# A longer one is refused, not read on.
REQUEST_MAX = 4096
# A client gets this long to send its request, and again this long to take
# its reply.  It is never waited for: the daemon's one loop serves it in
# pieces meanwhile and drops it at its deadline.
CLIENT_TIMEOUT = 2.0
# Clients served at once (the CLI, the ubus thread, LuCI polls through it);
# more are refused at once rather than given file descriptors without bound.
CLIENTS_MAX = 16


def peer_pid(sock):
    """The pid of the process at the other end of a Unix socket ("?" if the
    kernel does not say): where a bad request came from."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return str(struct.unpack("3i", creds)[0])
    except (AttributeError, OSError, struct.error):
        return "?"


class _Client:
    """One connection: the request read so far, then the reply not yet sent."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.pid = peer_pid(sock)
        self.deadline = deadline
        self.inbuf = bytearray()
        self.out = None  # the reply's bytes not yet sent, once there is one


class Server:
    """The control socket, served without ever blocking the daemon's loop.

    Each client sends one JSON request line and gets one JSON reply line.
    Partial reads and writes are kept per client, and each client has a
    deadline (``deadline()``, which the loop's timeout includes; ``expire``
    drops the overdue ones), so a client that says nothing, or does not
    read its reply, costs the loop nothing.

    ``handle(request)`` answers a request dict with ``(reply, events)``; the
    events are what the selector callbacks return to the loop.  A method in
    ``threaded`` (name -> function(request) -> reply) may take seconds: it
    runs in a thread of its own, which sends the reply.
    """

    def __init__(self, where, handle, threaded=None, log=None, clock=time.monotonic):
        self.handle = handle
        self.threaded = dict(threaded or {})
        self.log = log or (lambda msg: None)
        self.clock = clock
        self.clients = {}  # fileno -> _Client
        self.sel = None
        self.refused = 0  # connections refused since the last one served
        try:
            os.unlink(where)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(where)
            os.chmod(where, 0o600)
            self.sock.listen(CLIENTS_MAX)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def register(self, sel):
        self.sel = sel
        sel.register(self.sock, selectors.EVENT_READ, self._on_accept)

    def deadline(self):
        """The earliest client deadline, or None with no client."""
        return min((c.deadline for c in self.clients.values()), default=None)

    def expire(self, now):
        """Drop the clients whose deadline has passed; returns no events."""
        for client in [c for c in self.clients.values() if now >= c.deadline]:
            if client.out is None:
                self.log("control: client (pid %s) sent no complete request within %gs, dropped"
                         % (client.pid, CLIENT_TIMEOUT))
            else:
                self.log("control: client (pid %s) did not take its reply within %gs "
                         "(%d bytes left), dropped" % (client.pid, CLIENT_TIMEOUT, len(client.out)))
            self._drop(client)
        return []

    def close(self):
        for client in list(self.clients.values()):
            self._drop(client)
        if self.sel is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()

    # ------------------------------------------------------------ events

    def _on_accept(self):
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return []
            except OSError as e:  # EMFILE and the like: try again on the next wake-up
                self.log("control: accept failed: %s" % e)
                return []
            if len(self.clients) >= CLIENTS_MAX:
                if not self.refused:
                    self.log("control: %d clients connected already, refusing more (pid %s)"
                             % (len(self.clients), peer_pid(sock)))
                self.refused += 1
                sock.close()
                continue
            self.refused = 0
            sock.setblocking(False)
            client = _Client(sock, self.clock() + CLIENT_TIMEOUT)
            self.clients[sock.fileno()] = client
            self.sel.register(sock, selectors.EVENT_READ, lambda c=client: self._on_client(c))

    def _on_client(self, client):
        if client.out is not None:
            self._send(client)
            return []
        eof = False
        while b"\n" not in client.inbuf and len(client.inbuf) <= REQUEST_MAX:
            try:
                chunk = client.sock.recv(REQUEST_MAX + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return []
            if not chunk:
                eof = True
                break
            client.inbuf += chunk
        line, newline, _ = bytes(client.inbuf).partition(b"\n")
        if len(line) > REQUEST_MAX:
            self.log("control: request from pid %s longer than %d bytes, cut and refused"
                     % (client.pid, REQUEST_MAX))
            return self._reply(client, {"error": "bad request: longer than %d bytes" % REQUEST_MAX})
        if not newline and not eof:
            return []  # the rest comes later, or the deadline
        if not newline and not line:
            self._drop(client)  # connected and left: nothing to answer
            return []
        try:
            request = runfiles.loads(line or b"{}")
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as e:  # UnicodeDecodeError is one
            self.log("control: bad request from pid %s: %s" % (client.pid, e))
            return self._reply(client, {"error": "bad request: %s" % e})
        work = self.threaded.get(request.get("method"))
        if work is not None:
            self._detach(client)
            threading.Thread(target=_reply_from_thread, args=(client.sock, work, request),
                             daemon=True).start()
            return []
        try:
            reply, events = self.handle(request)
        except Exception as e:  # a bad request never stops failover
            self.log("control: request from pid %s failed: %r" % (client.pid, e))
            reply, events = {"error": "request failed: %s" % e}, []
        self._reply(client, reply)
        return list(events)

    def _reply(self, client, reply):
        try:
            client.out = _line(reply)
        except (TypeError, ValueError) as e:
            client.out = _line({"error": "reply not serialisable: %s" % e})
        client.deadline = self.clock() + CLIENT_TIMEOUT
        self._send(client)
        return []

    def _send(self, client):
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client left
            self._drop(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._drop(client)
            return
        self.sel.modify(client.sock, selectors.EVENT_WRITE, lambda c=client: self._on_client(c))

    def _detach(self, client):
        """Take the client off the loop, keeping its socket open."""
        self.clients.pop(client.sock.fileno(), None)
        self.sel.unregister(client.sock)

    def _drop(self, client):
        if self.clients.get(client.sock.fileno()) is client:
            self._detach(client)
        client.sock.close()


def _line(reply):
    return json.dumps(reply).encode() + b"\n"


def _reply_from_thread(sock, work, request):
    """Answer a slow request (diagnose) away from the loop; it may block
    this thread, never the loop, and for at most CLIENT_TIMEOUT per send."""
    try:
        try:
            reply = work(request)
        except Exception as e:  # a report, never a dead thread without one
            reply = {"error": "request failed: %s" % e}
        sock.settimeout(CLIENT_TIMEOUT)
        sock.sendall(_line(reply))
    except OSError:
        pass
    finally:
        sock.close()
