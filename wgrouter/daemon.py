"""The resident process: one selectors loop around the decision core.

Wake-ups come only from: kernel link/address/route notifications (netlink),
hotplug events (a spool file plus SIGUSR1), SIGHUP (reload), SIGTERM/SIGINT
(stop), the control socket used by the CLI, children the shell started
(probes, resolvers) and the core's own deadline.  Nothing polls at a fixed
rate except the core's monitor interval.
"""

import collections
import os
import random
import selectors
import signal
import socket
import threading
import time

import wgrouter
from wgrouter import config as wconfig
from wgrouter import control
from wgrouter import core
from wgrouter import model
from wgrouter import netlink
from wgrouter import runfiles
from wgrouter import shell as wshell
from wgrouter import sinks

# A burst of netlink messages (one ifdown = a link, an address and several
# route messages) is folded into one observation: wait this long for the
# burst to end.  Short enough not to matter for a 1 s failover budget.
NETLINK_SETTLE = 0.02


log = wgrouter.log




def wait_for_config(root, error):
    """Start with an invalid configuration: log it once and wait, rather than
    exit into procd's respawn loop (a Python start every 5 s, the same error
    each time).  SIGHUP (/etc/init.d/wgrouter reload, also procd's reload
    trigger) reads the configuration again; SIGTERM or SIGINT ends the wait.
    Returns the valid Config, or None when told to stop.  Nothing is applied
    meanwhile, and the hotplug script passes no events (no interface list)."""
    from wgrouter import config as wconfig
    waited = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        runfiles.claim_pidfile(root)
        runfiles.unlink(root, runfiles.IFACES)
        log("invalid configuration, managing nothing until it is fixed and "
            "'/etc/init.d/wgrouter reload' is run: %s" % error)
        while True:
            signum = signal.sigwait(waited)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if runfiles.read_pid(root) == os.getpid():
                    runfiles.unlink(root, runfiles.PIDFILE)
                return None
            if signum != signal.SIGHUP:
                continue  # SIGUSR1: a stray hotplug signal, nothing spooled for us
            try:
                cfg = wconfig.load(root)
            except wgrouter.Error as e:
                log("configuration still invalid: %s" % e)
                continue
            log("configuration is valid now: starting")
            return cfg
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Daemon:
    def __init__(self, root="/", cfg=None, restart_cmd=("ifup",), use_ubus=True):
        self.root = root
        self.config = cfg if cfg is not None else wconfig.load(root)
        self.restart_cmd = tuple(restart_cmd)
        self.use_ubus = use_ubus
        self.sel = selectors.DefaultSelector()
        self.pending = []  # events not yet given to the core
        self.kernel_changed = True
        self.running = False
        self.reload_requested = False
        self.started = time.monotonic()
        self._snapshot = {}  # model.status_json of a step's model.Status
        self._snapshot_at = None  # (now, wall) of the last step, if not built yet
        self.ubus = None  # the ubus service
        self.ubus_sink = None
        self.mqtt = None  # sinks.MqttStarter while it starts, then sinks.MqttSink
        self.posted = collections.deque()  # (request, reply slot) from the ubus thread
        self.engine = None
        self.shell = None
        self.monitor = None
        self.control = None
        self.wake_r = self.wake_w = None
        self.observe_errors = ()  # wg / netlink failures, logged when they change
        self.wakeups = 0  # loop iterations: the idle cost the benchmark reports

    # ------------------------------------------------------------ setup

    def _setup(self):
        os.makedirs(os.path.dirname(runfiles.path(self.root, runfiles.SPOOL)), exist_ok=True)
        # before the control socket of a running daemon is replaced
        runfiles.refuse_if_running(self.root)
        # A SIGTERM from here on stops the daemon, even before the loop runs.
        self.running = True
        # Signals arrive through a socketpair so the select() wakes up.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wake)

        netlink.report = log  # a malformed message in a dump is skipped, and said
        self.monitor = netlink.Monitor()
        self.sel.register(self.monitor.fileno(), selectors.EVENT_READ, self._on_netlink)

        # served in this loop without ever waiting for a client
        self.control = control.Server(runfiles.path(self.root, runfiles.CONTROL), self.handle_request, log=log)
        self.control.register(self.sel)

        # The core and the shell run on the monotonic clock: a step of the
        # wall clock (NTP at boot without RTC, date -s) neither stalls the
        # monitor nor cuts a hold-down short.  People see wall time.
        self.shell = wshell.Shell(
            self.config, root=self.root, restart_cmd=self.restart_cmd,
            state_path=runfiles.path(self.root, runfiles.STATE), clock=time.monotonic, selector=self.sel,
            report=log)
        for problem in self.shell.problems:
            log(problem)
        now = time.monotonic()
        self.engine = core.Engine(self.config, now, rng=random.Random())
        # What is spooled before this daemon publishes its interface list and
        # pid was spooled for an earlier one (the hotplug script spools only
        # for a live wgrouter named in the pid file) that died before taking
        # it.  It is an unknown part of what happened since: while no daemon
        # ran the script spooled nothing, so an 'ifdown' taken now may be one
        # whose 'ifup' was never spooled, and it would hold down a WAN that
        # the kernel shows up for the whole run.  A new daemon starts from
        # the kernel's state, as when the earlier one had taken its events.
        stale = runfiles.read_spool(self.root, log=lambda msg: None)
        if stale:
            log("hotplug spool: %d event(s) left by an earlier run dropped (%s): the kernel's state is read anew"
                % (len(stale), ", ".join("%s %s" % (e.action, e.interface) for e in stale[:4])
                   + (", ..." if len(stale) > 4 else "")))
        # published last, once the signal handlers are in place (the hotplug
        # script sends SIGUSR1 to this pid); then take what it spooled meanwhile
        runfiles.write_ifaces(self.root, self.config)
        runfiles.claim_pidfile(self.root)

        self.pending.extend(runfiles.read_spool(self.root))
        if self.use_ubus:
            self._start_ubus()
        self._start_mqtt()

    def _start_ubus(self):
        try:
            from wgrouter import ubusobj
        except ImportError:
            return
        try:
            # returns at once: the service's thread connects, and reconnects
            # after ubusd restarts; a reload never waits for the bus
            service = ubusobj.UbusService(Handlers(self))
            if service.start():
                self.ubus = service
                self.ubus_sink = sinks.UbusSink(service, log)
        except Exception as e:  # a broken binding: run without ubus
            log("ubus unavailable (%s); status only through the CLI" % e)

    def _start_mqtt(self):
        """Start MQTT in a thread of its own: the loop goes on meanwhile, and
        the ready sink comes back through the wake socket (_take_mqtt)."""
        if not self.config.mqtt.enabled:
            return
        identity = self.config.mqtt.identity or socket.gethostname()
        self.mqtt = sinks.MqttStarter(self.config.mqtt, identity, log, notify=self._wake)

    def _take_mqtt(self):
        """Put the MQTT sink in place once its thread has built it."""
        if not isinstance(self.mqtt, sinks.MqttStarter):
            return
        starter, done = self.mqtt, self.mqtt.take()
        if done is None:
            return  # still starting
        self.mqtt, error = done
        if error:
            log(error)
        if starter.dropped:
            log("mqtt: %d transitions of its start-up dropped (queue_max %d)" % (
                starter.dropped, starter.kept.maxlen))
        if self.mqtt is not None and self.snapshot:
            self.mqtt.state(self.snapshot, time.time())

    def _sinks(self):
        return [s for s in (self.ubus_sink, self.mqtt) if s is not None]

    @property
    def snapshot(self):
        """model.status_json of the last step's status, built when first asked
        for: by a status request, or a sink that takes the state (MQTT).  An
        idle loop that nobody asks builds none (the engine changes only in a
        step or a reload, so a later build gives the same answer)."""
        if self._snapshot_at is not None:
            now, wall = self._snapshot_at
            self._snapshot_at = None
            self._snapshot = self.engine.snapshot(now, wall=wall)
        return self._snapshot

    @snapshot.setter
    def snapshot(self, value):
        self._snapshot, self._snapshot_at = value, None

    def _wake(self):
        """Wake the loop from another thread."""
        try:
            self.wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # a wake-up is pending already
        except (OSError, AttributeError):
            pass  # stopped

    def post(self, request, timeout=5.0):
        """Answer a request in the loop (from the ubus thread): the reply, as
        handle_request gives it; ControlError when the loop does not answer."""
        slot = {"done": threading.Event(), "reply": None}
        self.posted.append((request, slot))
        self._wake()
        if not slot["done"].wait(timeout):
            raise control.ControlError("no answer from wgrouter: timed out")
        return slot["reply"]

    def _answer_posted(self, stopping=False):
        events = []
        while self.posted:
            request, slot = self.posted.popleft()
            if stopping:
                reply = {"error": "wgrouter is stopping"}
            else:
                try:
                    reply, more = self.handle_request(request)
                    events.extend(more)
                except Exception as e:  # a reply, never a ubus caller left waiting
                    reply = {"error": "%s failed: %s" % (request.get("method"), e)}
            slot["reply"] = reply
            slot["done"].set()
        return events

    # ---------------------------------------------------------- sources

    def _on_signal(self, signum, frame):
        if signum == signal.SIGUSR1:
            pass  # the spool is read in _on_wake
        elif signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.running = False

    def _on_wake(self):
        try:
            while self.wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._take_mqtt()
        return self._answer_posted() + runfiles.read_spool(self.root)

    def _on_netlink(self):
        if self.monitor.drain():
            self.kernel_changed = True
            # let the rest of the burst arrive, then observe once
            time.sleep(NETLINK_SETTLE)
            self.monitor.drain()
            return [model.KernelChanged()]
        return []

    def handle_request(self, request):
        """Answer one CLI/ubus request; returns (reply, events for the core)."""
        method = request.get("method")
        if method == "status":
            return self.status(), []
        if method == "reapply":
            return {"ok": True}, [model.Reapply()]
        if method == "switch":
            wan = request.get("wan")
            if wan in (None, "", "auto"):
                return {"ok": True, "wan": "auto"}, [model.Switch(wan=None)]
            if wan not in [w.name for w in self.config.wans]:
                return {"error": "unknown WAN %r (configured: %s)" % (
                    wan, ", ".join(w.name for w in self.config.wans))}, []
            return {"ok": True, "wan": wan}, [model.Switch(wan=wan)]
        return {"error": "unknown method %r" % (method,)}, []

    def status(self):
        """The last snapshot with the daemon's own fields."""
        return dict(self.snapshot, **model.status_json(None, model.DaemonStatus(
            version=wgrouter.__version__, pid=os.getpid(),
            uptime=round(time.monotonic() - self.started, 1), wakeups=self.wakeups,
            errors=list(self.observe_errors) or None,
            relays=(self.shell.relays() if self.shell is not None else None) or None)))

    # -------------------------------------------------------------- loop

    def _reload(self):
        self.reload_requested = False
        try:
            cfg = wconfig.load(self.root)
        except wgrouter.Error as e:
            log("reload refused, keeping the running configuration: %s" % e)
            return
        old_mqtt, self.config = self.config.mqtt, cfg
        self.snapshot  # built from the engine as its step left it
        self.engine.reconfigure(cfg, time.monotonic())
        self.shell.reconfigure(cfg)
        try:
            runfiles.write_ifaces(self.root, cfg)
        except OSError as e:
            log("hotplug interface list not written: %s" % e)
        if self.use_ubus and self.ubus is None:
            # python3-ubus may have come since the start (luci-app-wgrouter)
            self._start_ubus()
        self.kernel_changed = True
        self.pending.append(model.KernelChanged())  # step now; reconfigure applies only what changed
        if cfg.mqtt != old_mqtt:
            # a new broker, new credentials or MQTT switched on/off: the old
            # session says "offline" (bounded flush), a new one starts
            if self.mqtt is not None:
                self.mqtt.stop()
                self.mqtt = None
            self._start_mqtt()  # its state is published once it is ready
        log("configuration reloaded")

    def _step(self, now):
        """One engine step at ``now`` (time.monotonic())."""
        if self.shell.learn(self.pending):
            self.kernel_changed = True
        wans, peers, tunnels = self.shell.observe(self.kernel_changed)
        self.kernel_changed = False
        errors = tuple(e for e in (self.shell.wg_error, self.shell.kernel_error) if e)
        if errors != self.observe_errors:
            for e in errors:
                if e not in self.observe_errors:
                    log("observation failed: %s" % e)
            if not errors:
                log("observation works again")
            self.observe_errors = errors
        events, self.pending = tuple(self.pending), []
        obs = model.Observation(wans=wans, peers=peers, tunnels=tunnels, events=events)
        decision = self.engine.step(obs, now)
        wall = time.time()
        for action in decision.actions:
            if isinstance(action, model.Transition):
                self._transition(action, wall)
            else:
                self.pending.extend(self.shell.execute(action))
        self._snapshot_at = (now, wall)
        for sink in self._sinks():
            if sink.takes_state:
                sink.state(self.snapshot, wall)
        return decision.deadline

    def _transition(self, t, wall):
        log(str(t))
        data = {"time": wall, "tunnel": t.tunnel, "peer": t.peer, "was": t.was,
                "now": t.now, "because": t.because, "kind": t.kind}
        for sink in self._sinks():
            sink.transition(data)

    def _timeout(self, deadline, now):
        candidates = [d for d in (deadline, self.shell.deadline(),
                                  self.control.deadline() if self.control else None) if d is not None]
        wall = time.time()  # sinks' timers (MQTT's heartbeat) are on the wall clock
        for sink in self._sinks():
            at = sink.wake_at(wall)
            if at is not None:
                candidates.append(at - wall + now)
        if not candidates:
            return None
        return max(0.0, min(candidates) - now)

    def run(self):
        try:
            self._setup()
        except BaseException:
            self._abort_setup()
            raise
        log("started (pid %d, %d tunnel(s), WANs: %s)" % (
            os.getpid(), len(self.config.tunnels),
            ", ".join(w.name for w in self.config.wans) or "none"))
        try:
            deadline = self._guarded_step(time.monotonic())
            while self.running:
                now = time.monotonic()
                timeout = 0.0 if self.pending else self._timeout(deadline, now)
                ready = self.sel.select(timeout)
                self.wakeups += 1
                for key, _ in ready:
                    self.pending.extend(self._guarded(key.data))
                if not self.running:
                    break
                if self.reload_requested:
                    self._reload()
                now = time.monotonic()
                self.pending.extend(self.shell.expire(now))
                self.control.expire(now)
                wall = time.time()
                for sink in self._sinks():
                    at = sink.wake_at(wall)
                    if at is not None and wall >= at:
                        sink.state(self.snapshot, wall)
                if self.pending or (deadline is not None and now >= deadline):
                    deadline = self._guarded_step(now)
        finally:
            self._shutdown()

    # An unexpected error in one step or one source is logged and the loop goes
    # on: ending the daemon would remove every host route and leave no
    # failover until procd respawns it.
    STEP_RETRY = 1.0

    def _guarded_step(self, now):
        try:
            return self._step(now)
        except Exception as e:
            self.kernel_changed = True
            log("step failed, retrying in %gs: %r" % (self.STEP_RETRY, e))
            return now + self.STEP_RETRY

    def _guarded(self, source):
        try:
            return source() or ()
        except Exception as e:
            log("event source failed: %r" % (e,))
            return ()

    def _abort_setup(self):
        """Undo a half-done start: nothing was applied yet, only run files."""
        if self.control is not None:
            self.control.close()
        if self.shell is not None:
            self.shell.stop()
        self._remove_pidfile()

    def _remove_pidfile(self):
        """Remove the pid file, and the interface list with it, if they are
        ours (a newer daemon may own them)."""
        if runfiles.read_pid(self.root) == os.getpid():
            runfiles.unlink(self.root, runfiles.IFACES)
            runfiles.unlink(self.root, runfiles.PIDFILE)

    def _shutdown(self):
        log("stopping")
        try:
            if self.engine is not None:
                for action in self.engine.stop():
                    self.shell.execute(action)
            if self.shell is not None:
                self.shell.cleanup()
                self.shell.stop()
        finally:
            # no new requests from the CLI or the ubus thread from here on
            if self.control is not None:
                self.control.close()
                try:
                    os.unlink(runfiles.path(self.root, runfiles.CONTROL))
                except OSError:
                    pass
            self._answer_posted(stopping=True)
            for sink in reversed(self._sinks()):
                sink.stop()
            self._remove_pidfile()
            log("stopped")


# Longest one ubus call to diagnose holds the ubus thread: python3-ubus
# cannot defer a reply, so LuCI's status polls wait behind it.  A report
# takes well under a second on a healthy router; a dead WAN's DNS can make
# it take many seconds.
UBUS_DIAGNOSE_WAIT = 5.0
# A report that finished after its caller was told to call again is handed
# to the next call within this many seconds; an older one is run afresh.
UBUS_DIAGNOSE_KEEP = 60.0


class Handlers:
    """ubus method handlers.  They run in the ubus thread, so they only read
    the last snapshot or post work to the main loop (Daemon.post: a queue
    and the wake socket).  diagnose runs in a thread of its own
    and is waited for at most UBUS_DIAGNOSE_WAIT."""

    def __init__(self, daemon):
        self.daemon = daemon
        self._diag_lock = threading.Lock()
        self._diag_thread = None
        self._diag_started = 0.0
        self._diag_done = None  # (monotonic time finished, report) not yet handed out

    def _ask(self, request):
        return self.daemon.post(request)

    def status(self):
        return self.daemon.status()

    def reapply(self):
        return self._ask({"method": "reapply"})

    def switch(self, wan):
        return self._ask({"method": "switch", "wan": wan})

    def diagnose(self):
        # Diagnose only reads, and may wait seconds on a dead WAN's DNS:
        # never in the main loop, and only for a bounded time in this one.
        with self._diag_lock:
            done = self._take_report()
            if done is not None:
                return done
            if self._diag_thread is None:
                self._diag_started = time.monotonic()
                self._diag_thread = threading.Thread(target=self._diagnose, name="wgrouter-diagnose",
                                                     daemon=True)
                self._diag_thread.start()
            thread = self._diag_thread
        thread.join(UBUS_DIAGNOSE_WAIT)
        with self._diag_lock:
            done = self._take_report()
            if done is not None:
                return done
            return {"error": "diagnose still running (%ds so far); call again for its report"
                    % (time.monotonic() - self._diag_started)}

    def _take_report(self):
        """The report of a finished run, once; None if there is none (fresh)."""
        if self._diag_done is None:
            return None
        finished, report = self._diag_done
        self._diag_done = None
        return report if time.monotonic() - finished <= UBUS_DIAGNOSE_KEEP else None

    def _diagnose(self):
        from wgrouter import diagnose
        try:
            report = diagnose.run(self.daemon.root, self.daemon.config)
        except Exception as e:  # a report, never a dead thread without one
            report = {"error": "diagnose failed: %s" % e}
        with self._diag_lock:
            self._diag_done = (time.monotonic(), report)
            self._diag_thread = None
