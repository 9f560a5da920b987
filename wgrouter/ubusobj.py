"""The ubus object `wgrouter`: status, reapply, switch, diagnose, and events.

This is the only module that touches the python3-ubus binding.  The binding
keeps one connection per process and has no file descriptor to select on, so
the object is served from one daemon thread that owns the connection: it runs
``ubus.loop(LOOP_MS)`` and, between two turns, sends the queued events.
Handlers run in that thread; they must only read a snapshot or hand work to
the main loop (the daemon's handlers do exactly that).

Every method has a fixed signature: python3-ubus refuses missing, extra and
mistyped arguments before the callback runs, and has no optional arguments,
so methods that LuCI calls without arguments declare ``{}``.
"""

import collections
import signal
import sys
import threading
import time

import wgrouter

OBJECT = "wgrouter"

# Method name -> {argument: blobmsg type name}; the type names are resolved
# against the binding (``ubus.BLOBMSG_TYPE_<NAME>``) when the object is added.
METHODS = {
    "status": {},
    "reapply": {},
    "switch": {"wan": "STRING"},
    "diagnose": {},
}

# Events sent with ``ubus.send``; ``send_event("transition", ...)`` sends
# "wgrouter.transition".
EVENTS = ("wgrouter.transition",)

# One turn of ubus.loop() in ms.  Calls are served as they arrive; this bounds
# only how long a queued event waits and how long stop() takes, which must
# stay well under procd's term_timeout.
LOOP_MS = 1000

# After the bus connection breaks (ubusd restarted), retry this often.
RECONNECT_MIN = 1.0  # s
RECONNECT_MAX = 60.0  # s

# After a turn of ubus.loop() that ended early but found the bus alive, wait
# this long (s) so that a misbehaving loop cannot spin the CPU.
EARLY_PAUSE = 0.1

# Queued events beyond this are dropped (oldest first): the bus is down or
# nobody reads fast enough, and a burst of stale transitions helps no one.
EVENT_QUEUE_MAX = 64


class UbusError(wgrouter.Error):
    """ubus error"""


class UnknownEvent(UbusError):
    """unknown ubus event name"""


class NotStarted(UbusError):
    """the ubus object is not registered"""


def _stderr_log(msg):
    try:
        sys.stderr.write("wgrouter: ubus: %s\n" % msg)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _ignore_signal(signum, frame):
    """A Python-level no-op: children are waited for by their owners."""


def event_name(name):
    """The full ubus event name for ``name`` ("transition" or "wgrouter.transition")."""
    full = name if name.startswith(OBJECT + ".") else "%s.%s" % (OBJECT, name)
    if full not in EVENTS:
        raise UnknownEvent("unknown ubus event %r (known: %s)" % (name, ", ".join(EVENTS)))
    return full


class UbusService:
    """Publishes the `wgrouter` object and sends `wgrouter.*` events.

    ``handlers`` has ``status()``, ``reapply()``, ``switch(wan)`` ("auto" =
    automatic) and ``diagnose()``, each returning a dict; ``diagnose`` may
    raise NotImplementedError.  ``backend`` is the imported ``ubus`` module
    (imported here when None) or a stand-in with the same API.
    """

    def __init__(self, handlers, backend=None, log=None, socket_path=None):
        self.handlers = handlers
        self.backend = backend
        self.log = log or _stderr_log
        self.socket_path = socket_path
        self.connected = False
        self._events = collections.deque(maxlen=EVENT_QUEUE_MAX)
        self._lock = threading.Lock()  # guards the connection outside the thread
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------ bus

    def _connect(self):
        """Connect and add the object; raises what the binding raises."""
        bus = self.backend
        if self.socket_path is None:
            bus.connect()  # the binding refuses socket_path=None
        else:
            bus.connect(socket_path=self.socket_path)
        try:
            bus.add(OBJECT, self._object(bus))
        except Exception:
            bus.disconnect()
            raise
        self.connected = True

    def _disconnect(self):
        if not self.connected:
            return
        self.connected = False
        try:
            self.backend.disconnect()
        except Exception as e:  # already gone with ubusd
            self.log("disconnect: %s" % e)

    def _object(self, bus):
        methods = {}
        for method, args in METHODS.items():
            signature = {a: getattr(bus, "BLOBMSG_TYPE_" + t) for a, t in args.items()}
            methods[method] = {"method": self._callback(method), "signature": signature}
        return methods

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

    # ------------------------------------------------------------ API

    def start(self):
        """Connect and register the object; False (logged) when ubus is missing."""
        if self.backend is None:
            try:
                import ubus
            except ImportError:
                self.log("python3-ubus is not installed; no ubus object")
                return False
            self.backend = ubus
        try:
            with self._lock:
                self._connect()
        except Exception as e:
            self.log("cannot register object %r: %s" % (OBJECT, e))
            return False
        return True

    def send_event(self, name, data):
        """Send ``wgrouter.<name>`` with ``data``.

        While the serving thread runs, the event is queued and sent by that
        thread after its current loop turn (the binding's one connection must
        not be used from two threads at once).
        """
        full = event_name(name)
        if self._thread is not None and self._thread.is_alive():
            self._events.append((full, dict(data)))
            return
        with self._lock:
            if not self.connected:
                raise NotStarted("ubus object not registered: event %s not sent" % full)
            self.backend.send(full, dict(data))

    def serve_forever_in_thread(self):
        """Serve calls in a daemon thread until stop().

        Call it from the main thread, after the daemon's own signal handlers
        are installed.
        """
        if not self.connected:
            raise NotStarted()
        self._guard_signals()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="wgrouter-ubus", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self):
        """Stop serving, then disconnect (at most about LOOP_MS)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(LOOP_MS / 1000.0 * 3 + 1.0)
        self._thread = None
        with self._lock:
            self._flush_events()
            self._disconnect()

    def _guard_signals(self):
        """Keep uloop's signal handlers out of this process.

        While ubus.loop() runs, uloop installs its own handlers for SIGTERM,
        SIGINT and SIGCHLD, but only where the handler is SIG_DFL.  Its
        SIGTERM handler would merely end the loop turn, and its SIGCHLD
        handling reaps every child with waitpid(-1), stealing the exit status
        of the daemon's probes (subprocess then reports 0).  A Python handler
        in place keeps uloop away.
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
        while self._events and self.connected:
            name, data = self._events.popleft()
            try:
                self.backend.send(name, data)
            except Exception as e:
                self.log("event %s not sent: %s" % (name, e))
                raise

    def _alive(self):
        """Whether our object is still on the bus (False: connection gone)."""
        try:
            return OBJECT in self.backend.objects(OBJECT)
        except Exception:
            return False

    def _serve(self):
        delay = RECONNECT_MIN
        while not self._stop.is_set():
            try:
                with self._lock:
                    if not self.connected:
                        self._connect()
                        self.log("object %r registered again" % OBJECT)
                        delay = RECONNECT_MIN
                # the lock is not held here: stop() must not wait a whole turn
                started = time.monotonic()
                self.backend.loop(LOOP_MS)
                with self._lock:
                    self._flush_events()
                if time.monotonic() - started < LOOP_MS / 2000.0 and not self._stop.is_set():
                    # A turn ends early only when libubus saw the connection
                    # close (ubusd restarted): then every later turn returns
                    # at once too.  Make sure before reconnecting.
                    if not self._alive():
                        raise NotStarted("ubus connection lost")
                    self._stop.wait(EARLY_PAUSE)
            except Exception as e:
                self.log("%s; reconnecting in %gs" % (e, delay))
                with self._lock:
                    self._disconnect()
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, RECONNECT_MAX)
