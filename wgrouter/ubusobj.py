"""The ubus objects `wgrouter` and `luci.wgrouter`, and the `wgrouter.*` events.

This is the only module that touches the python3-ubus binding.  The binding
keeps one connection per process and has no file descriptor to select on, so
one daemon thread owns the connection: it connects, adds the objects, runs
``ubus.loop(LOOP_MS)`` and, between two turns, sends the queued events and
checks that the connection still leads to a running ubusd.  Handlers run in
that thread; they must only read a snapshot or hand work to the main loop
(the daemon's handlers do exactly that).  The main thread never calls the
binding while the thread runs, so a reload never waits for the bus.

Two objects, because python3-ubus signatures are strict: every declared
argument is required, any other is refused, none is optional.  A shell's
``ubus call wgrouter status`` sends no argument; uhttpd's /ubus handler
(uhttpd ``ubus.c``, ``uh_ubus_send_request``) and LuCI's ucode proxy
(luci-base ``ucode/controller/admin/index.uc``) add ``ubus_rpc_session`` to
every call they forward.  So `wgrouter` declares the methods' own arguments
and `luci.wgrouter` the same plus ``ubus_rpc_session``; the rpcd ACL names
only `luci.wgrouter`.  The session was checked by uhttpd against rpcd's ACL
before the call reached us; the handlers ignore it.

After ubusd goes away, python-ubus gives no sign on its own: ``loop()`` keeps
taking its whole timeout, ``send()`` returns False, ``objects()`` raises and
``get_connected()`` stays True (observed, see /work/shared/OPENWRT.md).  ubusd
removes its socket when it stops and a new ubusd binds a new one
(ubus ``ubusd_main.c``: unlink, then usock), so after each turn the thread
stats the socket (one system call, no bus traffic): gone means lost; a
different file is confirmed with ``objects()``, which raises on a dead
connection.  A failed ``send()`` is confirmed the same way.
"""

import collections
import os
import signal
import socket
import threading
import time

import wgrouter

OBJECT = "wgrouter"
LUCI_OBJECT = "luci.wgrouter"
SESSION_ARG = "ubus_rpc_session"

# The binding's default socket on OpenWrt (ubus UBUS_UNIX_SOCKET); passed
# explicitly so that the thread knows which file to watch.
DEFAULT_SOCKET = "/var/run/ubus/ubus.sock"

# Method name -> {argument: blobmsg type name}; the type names are resolved
# against the binding (``ubus.BLOBMSG_TYPE_<NAME>``) when the object is added.
METHODS = {
    "status": {},
    "reapply": {},
    "switch": {"wan": "STRING"},
    "diagnose": {},
}

# Events sent with ``ubus.send``; ``send_event("transition", ...)`` sends
# "wgrouter.transition".  "wgrouter.state" is sent by this module each time
# the objects are registered, so that a listener that missed transitions
# while ubusd was away learns where things stand.
EVENTS = ("wgrouter.transition", "wgrouter.state")

# One turn of ubus.loop() in ms.  Calls are served as they arrive (the
# binding's loop() blocks in uloop until its timeout: python-ubus
# ``ubus_python_loop``, observed in /work/shared/OPENWRT.md); this bounds how
# long a queued event waits (4 s), how long stop() waits for the thread (4 s,
# within the init script's term_timeout of 10 s after the routes are
# removed) and how soon a lost connection is noticed, so that the objects
# are back within 5 s of a quick ubusd restart.  It is the thread's idle
# wake-up rate: with the main loop's one wake-up per check_interval (1.5 s)
# the whole process stays under one a second.
LOOP_MS = 4000

# While not connected the thread looks at ubusd's socket once per TICK s and
# connects at once when a new ubusd has bound it; otherwise it retries with
# exponential backoff between these bounds (a socket that is there but does
# not take us, e.g. a name held by another process).  The bound to meet: back
# on the bus within 5 s of ubusd's return.
TICK = 1.0  # s
RECONNECT_MIN = 1.0  # s
RECONNECT_MAX = 60.0  # s

# Besides the socket check, the connection is confirmed with objects() this
# often (s), in case ubusd's socket is replaced in a way stat cannot see.
PROBE_INTERVAL = 60.0

# Before ubus.connect(), a plain socket checks that ubusd answers: it sends
# HELLO to every new client at once (ubus ubusd_proto.c, ubusd_send_hello).
# ubus.connect() reads that HELLO with a blocking read (libubus-io.c,
# ubus_reconnect) while holding the GIL (ubus_python.c releases it only in
# loop()), so a socket that accepts but never speaks (a stopped or hung
# ubusd) would freeze every thread of the daemon, the main loop included
# (observed: no main-thread tick for 10 s, and SIGTERM swallowed by uloop).
HELLO_TIMEOUT = 1.0  # s

# Queued events beyond this are dropped (oldest first): the bus is down or
# nobody reads fast enough, and a burst of stale transitions helps no one.
EVENT_QUEUE_MAX = 64


class UbusError(wgrouter.Error):
    """ubus error"""


class UnknownEvent(UbusError):
    """unknown ubus event name"""


class NotStarted(UbusError):
    """the ubus object is not registered"""


class ConnectionLost(UbusError):
    """the connection to ubusd is lost"""


class NoAnswer(UbusError):
    """ubusd does not answer"""


def _stderr_log(msg):
    wgrouter.log("ubus: %s" % msg)


def _ignore_signal(signum, frame):
    """A Python-level no-op: children are waited for by their owners."""


def event_name(name):
    """The full ubus event name for ``name`` ("transition" or "wgrouter.transition")."""
    full = name if name.startswith(OBJECT + ".") else "%s.%s" % (OBJECT, name)
    if full not in EVENTS:
        raise UnknownEvent("unknown ubus event %r (known: %s)" % (name, ", ".join(EVENTS)))
    return full


def signatures():
    """{object: {method: {argument: blobmsg type name}}} of both objects."""
    luci = {m: dict(args, **{SESSION_ARG: "STRING"}) for m, args in METHODS.items()}
    return {OBJECT: {m: dict(args) for m, args in METHODS.items()}, LUCI_OBJECT: luci}


def _one_line(e):
    # the binding's IOError text ends with a newline
    return " ".join(str(e).split())


def socket_identity(path):
    """What tells one ubusd's socket from the next: None when it is absent.

    The inode number alone is not enough: a file system may give the new
    socket the number of the one just unlinked (seen on ext4), but never
    the same change time.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def ubusd_answers(path, timeout=None):
    """Whether the socket at ``path`` accepts a client and greets it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(HELLO_TIMEOUT if timeout is None else timeout)
    try:
        s.connect(path)
        return bool(s.recv(1))
    except OSError:
        return False
    finally:
        s.close()


class UbusService:
    """Publishes `wgrouter` and `luci.wgrouter` and sends `wgrouter.*` events.

    ``handlers`` has ``status()``, ``reapply()``, ``switch(wan)`` ("auto" =
    automatic) and ``diagnose()``, each returning a dict; ``diagnose`` may
    raise NotImplementedError.  ``backend`` is the imported ``ubus`` module
    (imported here when None) or a stand-in with the same API.
    """

    def __init__(self, handlers, backend=None, log=None, socket_path=None):
        self.handlers = handlers
        self.backend = backend
        self.log = log or _stderr_log
        self.socket_path = socket_path or DEFAULT_SOCKET
        self.connected = False
        self.registered = threading.Event()  # set while the objects are on the bus
        self.registrations = 0
        self._events = collections.deque(maxlen=EVENT_QUEUE_MAX)
        self._stop = threading.Event()
        self._thread = None
        self._identity = None  # socket_identity() when connected
        self._next_probe = 0.0
        self._lost_at = 0.0
        self._delay = RECONNECT_MIN  # s before retrying the same socket

    # ------------------------------------------------------------ API

    def start(self):
        """Start the thread that connects, serves and reconnects.

        Returns False (logged) when python3-ubus is not installed.  Call it
        from the main thread, after the daemon's own signal handlers are
        installed.  It returns at once: the first connection is made by the
        thread, and a bus that is not there yet is retried.
        """
        if self.backend is None:
            try:
                import ubus
            except ImportError:
                self.log("python3-ubus is not installed; no ubus object")
                return False
            self.backend = ubus
        if self._thread is not None and self._thread.is_alive():
            return True
        self._guard_signals()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="wgrouter-ubus", daemon=True)
        self._thread.start()
        return True

    def send_event(self, name, data):
        """Queue ``wgrouter.<name>`` with ``data``; the thread sends it after
        its current loop turn, or once the bus is back."""
        full = event_name(name)
        if self._thread is None or not self._thread.is_alive():
            raise NotStarted("ubus service not started: event %s not sent" % full)
        self._events.append((full, dict(data)))

    def stop(self):
        """Stop serving, send what is queued, disconnect (at most about LOOP_MS)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # the turn under way, then the flush: well within term_timeout
            thread.join(LOOP_MS / 1000.0 + 2.0)
            if thread.is_alive():
                # a binding call is stuck: do not touch the connection
                self.log("ubus thread did not stop")
                return
        self._thread = None
        if self.connected:
            try:
                self._flush_events()
            except ConnectionLost:
                pass
            self._disconnect()

    # ------------------------------------------------------------ bus

    def _connect(self):
        """Connect and add both objects; raises what the binding raises."""
        bus = self.backend
        identity = socket_identity(self.socket_path)
        if not ubusd_answers(self.socket_path):
            raise NoAnswer("ubusd at %s does not answer" % self.socket_path)
        bus.connect(socket_path=self.socket_path)
        try:
            for name, methods in signatures().items():
                bus.add(name, self._object(bus, methods))
        except Exception:
            bus.disconnect()
            raise
        self.connected = True
        self._identity = identity
        self._next_probe = time.monotonic() + PROBE_INTERVAL

    def _disconnect(self):
        if not self.connected:
            return
        self.connected = False
        self.registered.clear()
        try:
            self.backend.disconnect()
        except Exception as e:  # already gone with ubusd
            self.log("disconnect: %s" % _one_line(e))

    def _object(self, bus, methods):
        table = {}
        for method, args in methods.items():
            signature = {a: getattr(bus, "BLOBMSG_TYPE_" + t) for a, t in args.items()}
            table[method] = {"method": self._callback(method), "signature": signature}
        return table

    def _callback(self, method):
        def callback(handler, data):
            handler.reply(self.dispatch(method, data))
        return callback

    def dispatch(self, method, data):
        """Run one handler and return the reply dict (errors become {"error"})."""
        try:
            if method == "switch":
                reply = self.handlers.switch(data["wan"])
            else:
                reply = getattr(self.handlers, method)()
        except NotImplementedError:
            return {"error": "%s is not available in this version" % method}
        except Exception as e:  # a handler bug must not kill the ubus thread
            self.log("%s failed: %s: %s" % (method, type(e).__name__, e))
            return {"error": "%s failed: %s" % (method, e)}
        if not isinstance(reply, dict):
            return {"error": "%s gave no answer" % method}
        return reply

    def _guard_signals(self):
        """Keep uloop's signal handlers out of this process.

        ubus.connect() runs uloop_init(), which installs uloop's own handlers
        for SIGTERM, SIGINT and SIGCHLD, but only where the handler is
        SIG_DFL (libubox ``uloop.c``, ``uloop_install_handler``).  Its SIGTERM
        handler would merely end the loop turn, and its SIGCHLD handling
        reaps every child with waitpid(-1) inside ubus.loop(), stealing the
        exit status of the daemon's probes (subprocess then reports 0).  A
        Python handler in place before the first connect keeps uloop away.
        """
        if threading.current_thread() is not threading.main_thread():
            self.log("serving started outside the main thread: signals not guarded")
            return
        if signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGCHLD, _ignore_signal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self.log("no handler for %s: uloop would swallow it" % sig.name)

    # ---------------------------------------------------------- thread

    def _flush_events(self):
        """Send the queued events; ConnectionLost when the bus refuses one."""
        while self._events and self.connected:
            name, data = self._events.popleft()
            try:
                sent = self.backend.send(name, data)
            except Exception as e:  # a bad payload: log it, keep the others
                self.log("event %s not sent: %s" % (name, _one_line(e)))
                continue
            if sent is False:
                # the binding answers False once ubusd is gone: keep the event
                self._events.appendleft((name, data))
                reason = self._lost(force=True)
                if reason:
                    raise ConnectionLost(reason)
                self._events.popleft()
                self.log("event %s not sent (ubusd refused it)" % name)

    def _lost(self, force=False):
        """Why the connection no longer leads to a running ubusd, or None."""
        identity = socket_identity(self.socket_path)
        if identity is None:
            return "ubusd's socket %s is gone" % self.socket_path
        now = time.monotonic()
        if not force and identity == self._identity and now < self._next_probe:
            return None
        self._next_probe = now + PROBE_INTERVAL
        try:
            found = self.backend.objects(OBJECT)
        except Exception as e:
            return "lookup failed: %s" % _one_line(e)
        if OBJECT not in found:
            return "object %r is no longer on the bus" % OBJECT
        self._identity = identity  # same ubusd, the socket's metadata changed
        return None

    def _send_state(self, because):
        """Queue the current state first: sent right after (re)registration."""
        try:
            st = self.handlers.status()
        except Exception as e:
            self.log("state not sent: %s: %s" % (type(e).__name__, e))
            return
        if not isinstance(st, dict) or not all(k in st for k in ("tunnels", "wans", "version")):
            return  # no snapshot yet (the daemon is starting): transitions follow
        data = {"time": time.time(), "because": because, "tunnels": st["tunnels"],
                "wans": st["wans"], "version": st["version"]}
        self._events.appendleft(("wgrouter.state", data))

    def _try_connect(self, first):
        try:
            self._connect()
        except Exception as e:
            return _one_line(e)
        self.registrations += 1
        names = " and ".join(repr(n) for n in signatures())
        if first:
            self.log("objects %s registered" % names)
        else:
            self.log("objects %s registered again, %.1f s after the connection was lost"
                     % (names, time.monotonic() - self._lost_at))
        self._send_state("registered" if first else "registered again")
        self.registered.set()
        return None

    def _wait_for_bus(self, first):
        """Connect, retrying until it works or stop(); True when connected.

        A socket other than the one of the lost connection (a new ubusd) is
        tried at once; the same one only after the backoff, which doubles
        with each connection that is lost before it served a turn.
        """
        last_identity = self._identity
        next_try = time.monotonic() + (0.0 if first else self._delay)
        last_error = None
        while not self._stop.is_set():
            identity = socket_identity(self.socket_path)
            now = time.monotonic()
            if identity is not None and (now >= next_try or identity != last_identity):
                error = self._try_connect(first)
                if error is None:
                    return True
                if error != last_error:
                    self.log("cannot register object %r: %s; retrying" % (OBJECT, error))
                last_error = error
                next_try = now + self._delay
                self._delay = min(self._delay * 2, RECONNECT_MAX)
                last_identity = identity
            elif identity is None and last_error is None:
                last_error = "no socket"
                self.log("ubusd's socket %s is not there; waiting for it" % self.socket_path)
            self._stop.wait(TICK)
        return False

    def _serve(self):
        first = True
        served = False
        while not self._stop.is_set():
            if not self.connected:
                if not self._wait_for_bus(first):
                    break
                first = False
                served = False
            try:
                # the binding releases the GIL only here
                self.backend.loop(LOOP_MS)
                self._flush_events()
                reason = self._lost()
                if reason:
                    raise ConnectionLost(reason)
                self._delay = RECONNECT_MIN  # this connection works
                served = True
            except Exception as e:
                if not served:  # lost again before it served a turn
                    self._delay = min(self._delay * 2, RECONNECT_MAX)
                self._lost_at = time.monotonic()
                self.log("connection to ubusd lost (%s); reconnecting" % _one_line(e))
                self._disconnect()
