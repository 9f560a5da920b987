"""The thin shell: observe the kernel and WireGuard, execute the core's actions.

Synchronous actions (routes, endpoints, restarts) go through ``Applier``;
probes and resolutions run as async children whose stdout (or socket: an
echo or a query in process) the daemon's one selectors loop watches.  A key's ``data`` is a callable returning the
events of that child once it has finished.

Steady state forks no process: each check reads the tunnels' peers in
process (``wgrouter.wg``: the UAPI socket of wireguard-go, else the kernel's
generic netlink), and forks `wg show all dump` only for a device neither
answers for.  Netlink is dumped only when the daemon's monitor saw a change.
"""

import dataclasses
import json
import math
import os
import selectors
import time

import wgrouter
from wgrouter import apply as apply_mod
from wgrouter import kernel
from wgrouter import model
from wgrouter import ping
from wgrouter import resolve
from wgrouter import runfiles
from wgrouter import runner as runner_mod
from wgrouter import wg as wg_mod
from wgrouter import wgdump

Child = runner_mod.Child


# The shell runs the applier's actions too: one error for an action nobody handles.
UnknownAction = apply_mod.UnknownAction


# Margin on top of ping's own -W before a child is killed: ping needs a
# moment to start and to exit after its wait.
PING_GRACE = 2.0
CLOCK_SLACK = 0.001


def ping_argv(target, source, timeout, device=None):
    """ping once from ``source`` (a device, or an address of the target's
    family: busybox and iputils take either with -I, but refuse a source
    address of the other family).  An address of the wrong family gives way
    to ``device``."""
    # busybox and iputils ping both take whole seconds for -W.
    wait = max(1, int(math.ceil(timeout)))
    if source and model.is_ip(source) and model.family(source) != model.family(target):
        source = device
    return ["ping", "-c", "1", "-W", str(wait)] + (["-I", source] if source else []) + [target]


class _Group:
    """The children of one ProbeWan: the first answer decides."""

    def __init__(self, size):
        self.pending = size
        self.done = False


class Shell:
    """Observation and action for the daemon.

    ``clock`` is the core's ``now`` (``time.monotonic``): ``deadline()`` and
    ``expire(now)`` speak it, and ``observe()`` puts the kernel's handshake
    times, which are on ``wall`` (unix time), on it.  Children are timed on the monotonic
    clock inside, so an NTP step at boot neither kills them early nor lets
    them run forever.

    ``selector`` is the loop that watches the children's output (the
    daemon's, given once here).

    ``wg`` reads and sets peers in process (a ``wg.Client``; one answering
    for no device, ``wg.Client(())``, leaves everything to `wg` through
    ``runner``).

    ``icmp``: probes send their echo from a raw socket in process
    (``wgrouter.ping``); False, or a raw socket refused, forks `ping`
    through ``runner``.  ``report`` says once why it had to fork.
    """

    def __init__(
        self, config, runner=None, root="/", restart_cmd=("ifup",), state_path=None, clock=time.monotonic,
        wg=None, selector=None, wall=None, icmp=True, report=None,
    ):
        self.runner = runner or runner_mod.Runner()
        self.wg = wg if wg is not None else wg_mod.Client()
        self.icmp = icmp
        self.report = report
        self.root = root
        self.clock = clock  # the core's clock
        self.wall = wall or time.time  # the kernel's handshake stamps are on this one
        self.applier = apply_mod.Applier(
            self.runner,
            state_path or runfiles.path(root, runfiles.STATE),
            restart_cmd=restart_cmd,
            conntrack_flush=config.settings.conntrack_flush,
            config=config,
            wg=self.wg,
        )
        self.wans = None
        self.wg_error = ""
        self.kernel_error = ""
        self.children = []  # running runner.Watched objects (Child, ping.Echo, resolve.Query)
        self._handshakes = {}  # (tunnel, key) -> (kernel's unix time, the same on clock)
        self._last_read = None  # (rows per tunnel, peers, present) of the last read
        self._selector = selector  # where children's output is watched (the daemon's loop)
        # for tests: where endpoint name queries go
        self.resolve_port = None
        self.devices_path = runfiles.path(root, runfiles.DEVICES)
        # what the run files held that was refused (the daemon logs it)
        self.problems = list(self.applier.state.problems)
        self.learned = self._read_learned()
        self.reconfigure(config)

    def reconfigure(self, config):
        """Take a new configuration; what was applied stays recorded, and the
        kernel is dumped again on the next observe()."""
        self.config = config
        self.tunnel_names = frozenset(t.name for t in config.tunnels)
        self.applier.reconfigure(config)
        self.wans = None

    # ------------------------------------------------------------ devices

    def _read_learned(self):
        """The learned devices, entry by entry: a bad file or entry is left
        out (the WAN waits for its next ifup, as on a first start) and said
        in ``problems``."""
        try:
            learned = runfiles.read_json(self.devices_path)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.problems.append("%s ignored: %s" % (self.devices_path, e))
            return {}
        if not isinstance(learned, dict):
            self.problems.append("%s ignored: not a JSON object" % self.devices_path)
            return {}
        good = {wan: device for wan, device in learned.items()
                if isinstance(device, str) and runfiles.is_device_name(device)}
        bad = [wan for wan in learned if wan not in good]
        if bad:
            self.problems.append("%s: %d entry(ies) ignored, not a device name (first: %r: %r)"
                                 % (self.devices_path, len(bad), bad[0][:80], learned[bad[0]]))
        return good

    def learn(self, events):
        """A WAN configured without a device takes the one netifd names in
        its ifup or ifupdate event (DEVICE).  True if one changed."""
        unknown = {w.name for w in self.config.wans if not w.device}
        changed = False
        for ev in events:
            if not isinstance(ev, model.Hotplug):
                continue
            wan, device = ev.interface, ev.device
            if ev.action in ("ifup", "ifupdate") and wan in unknown and device \
                    and self.learned.get(wan) != device:
                self.learned[wan] = device
                changed = True
        if changed:
            self.wans = None
            try:
                runfiles.write_atomic(self.devices_path, json.dumps(self.learned))
            except OSError:
                pass  # known until the daemon restarts
        return changed

    def config_wans(self):
        """The configured WANs, with learned devices filled in."""
        return tuple(w if w.device else dataclasses.replace(w, device=self.learned.get(w.name, ""))
                     for w in self.config.wans)

    def relays(self):
        """{tunnel: {public key: the relay's status as a dict}} of the running relays."""
        out = {}
        for (tunnel, key), st in self.applier.relay_status().items():
            out.setdefault(tunnel, {})[key] = dataclasses.asdict(st)
        return out

    def cleanup(self):
        """Remove every host route and rule we added (on stop); returns errors."""
        return self.applier.cleanup()

    # ------------------------------------------------------------ observe

    def observe(self, kernel_changed):
        """(wan states, {(tunnel, key): PeerStats}, tunnels present).

        Netlink is dumped only when ``kernel_changed`` (or on the first call);
        the tunnels' peers are read every time.  When that fails, the tunnels
        present are unknown: None (an empty set says none is there).
        Handshake times are on ``clock``.
        """
        if kernel_changed or self.wans is None or self.kernel_error:
            try:
                self.wans = kernel.observe_wans(self.config_wans(), mwan3=self.config.settings.mwan3)
                self.kernel_error = ""
            except (OSError, wgrouter.Error) as e:
                # Keep the last good view (all down if there is none) and
                # dump again on the next check.
                self.kernel_error = "netlink dump failed: %s" % e
                if self.wans is None:
                    self.wans = {w.name: model.WanState(w.name, w.device, False) for w in self.config_wans()}
        dump = self._read_peers()
        if dump is None:
            self._last_read = None
            return self.wans, {}, None
        last = self._last_read
        if last is not None and last[0].keys() == dump.keys() and all(
                rows is last[0][t] for t, rows in dump.items()):
            return self.wans, last[1], last[2]  # the same rows as last time (wg's cache)
        peers = {}
        handshakes = {}
        for tunnel, rows in dump.items():
            for row in rows:
                key = (tunnel, row.public_key)
                peers[key] = self._on_clock(key, row.stats(), handshakes)
        self._handshakes = handshakes
        present = frozenset(dump)
        self._last_read = (dump, peers, present)
        return self.wans, peers, present

    def _read_peers(self):
        """{tunnel: [wg.PeerInfo]} of the managed tunnels present, or None
        (unknown, ``wg_error`` says why).  In process where a transport
        answers; `wg show all dump` only for the tunnels none answers for."""
        found, failed = self.wg.read(sorted(self.tunnel_names))
        self.wg_error = ""
        if not failed:
            return found
        dumped, self.wg_error = wgdump.fallback(self.runner, failed, in_process=bool(self.wg.transports))
        if dumped is None:
            return None
        found.update((tunnel, dev.peers) for tunnel, dev in dumped.items())
        return found

    def _on_clock(self, key, stats, handshakes):
        """``stats`` with its handshake time (unix time from the kernel) on
        ``clock``.  A handshake is converted once, when first seen: a later
        step of the wall clock does not age it."""
        raw = stats.latest_handshake
        if not raw:
            return stats
        seen = self._handshakes.get(key)
        if seen is None or seen[0] != raw:
            seen = (raw, raw - (self.wall() - self.clock()))
        handshakes[key] = seen
        return dataclasses.replace(stats, latest_handshake=seen[1])

    # ------------------------------------------------------------ execute

    def execute(self, action, selector=None):
        """Run one action; synchronous ones return their event, async ones
        register a child in the shell's selector (or ``selector``) and return []."""
        selector = selector or self._selector
        if isinstance(action, (model.ApplyPath, model.RemovePath, model.RestartTunnel, model.StopRelay)):
            return [self.applier.execute(action)]
        if isinstance(action, model.Transition):
            return []
        if isinstance(action, model.Probe):
            return self._probe(action, selector)
        if isinstance(action, model.ProbeWan):
            return self._probe_wan(action, selector)
        if isinstance(action, model.Resolve):
            return self._resolve(action, selector)
        raise UnknownAction("action the shell does not handle: %r" % (action,))

    def _probe(self, a, selector):
        def event(ok, error=""):
            return [model.ProbeResult(tunnel=a.tunnel, peer=a.peer, ok=ok, error=error or "")]

        def finish(rc, out, err):
            return event(rc == 0, "" if rc == 0 else (err.strip() or "no answer from %s" % a.target))

        try:
            child = self._ping(a.target, a.source or a.tunnel, a.tunnel, a.timeout, finish,
                               lambda: event(False, "probe of %s timed out" % a.target),
                               "probe %s %s" % (a.tunnel, a.target))
        except (runner_mod.CannotStart, OSError) as e:  # missing, fork failed (ENOMEM), not sent
            return event(False, str(e))
        self._start(child, selector)
        return []

    def _ping(self, target, source, device, timeout, finish, on_timeout, name, group=None):
        """One echo to ``target`` from ``source`` (a device or an address,
        as ping_argv's -I), as a child the loop watches: in process unless
        the raw socket is refused, then a forked `ping`."""
        if self.icmp:
            try:
                return ping.Echo(target, source, device, time.monotonic() + timeout, finish, on_timeout,
                                 name=name, group=group)
            except ping.NoRawSocket as e:
                self.icmp = False
                if self.report is not None:
                    self.report("%s: %s; probes fork ping from now on" % (name, e))
        proc = self.runner.spawn(ping_argv(target, source, timeout, device=device))
        return Child(proc, time.monotonic() + timeout + PING_GRACE, finish, on_timeout, name=name, group=group)

    def _probe_wan(self, a, selector):
        def event(ok, error=""):
            # the core sends one ProbeWan per address family
            family = model.family(a.targets[0]) if a.targets else None
            return [model.WanProbeResult(wan=a.wan, ok=ok, error=error or "", family=family)]

        if not a.targets:
            return event(False, "no track IPs")
        group = _Group(len(a.targets))
        errors = []

        def finisher(target):
            def finish(rc, out, err):
                group.pending -= 1
                if group.done:
                    return []
                if rc == 0:
                    group.done = True
                    self._cancel_group(group)
                    return event(True)
                errors.append("%s: %s" % (target, err.strip() or "no answer"))
                if group.pending <= 0:
                    group.done = True
                    return event(False, "; ".join(errors))
                return []

            return finish

        def on_timeout():
            group.pending -= 1
            if group.done or group.pending > 0:
                return []
            group.done = True
            return event(False, "; ".join(errors + ["timed out"]))

        started = 0
        for target in a.targets:
            try:
                child = self._ping(target, a.device, None, a.timeout, finisher(target), on_timeout,
                                   "wan probe %s %s" % (a.wan, target), group=group)
            except (runner_mod.CannotStart, OSError) as e:  # missing, fork failed (ENOMEM), not sent
                group.pending -= 1
                errors.append("%s: %s" % (target, e) if isinstance(e, OSError) else str(e))
                continue
            self._start(child, selector)
            started += 1
        if not started:
            return event(False, "; ".join(errors))
        return []

    def _resolve(self, a, selector):
        # without dns_server for this WAN: the servers netifd learned on it
        a = dataclasses.replace(a, servers=resolve.servers_for(a.wan, a.servers, self.root))
        try:
            child = resolve.start_query(a, port=self.resolve_port)
        except ImportError as e:
            return [model.ResolveFailed(host=a.host, wan=a.wan, error="%s (%s)" % (resolve.NO_DNSPYTHON, e))]
        except wgrouter.Error as e:
            return [model.ResolveFailed(host=a.host, wan=a.wan, error=str(e))]
        self._start(child, selector)
        return []

    # ------------------------------------------------------------ children

    def _start(self, child, selector):
        self._selector = selector
        fileobj = child.fileobj
        os.set_blocking(fileobj.fileno(), False)
        self.children.append(child)
        selector.register(fileobj, selectors.EVENT_READ, lambda: self._readable(child))

    def _forget(self, child):
        if child in self.children:
            self.children.remove(child)
        if self._selector is not None:
            try:
                self._selector.unregister(child.fileobj)
            except (KeyError, ValueError):
                pass

    def _readable(self, child):
        # select() may report a child that a sibling's answer has already
        # cancelled (ProbeWan: first answer wins) in the same batch
        if child not in self.children:
            return []
        if child.read():
            return []
        self._forget(child)
        rc, out, err = child.reap()
        return child.finish(rc, out, err)

    def _cancel_group(self, group):
        for child in [c for c in self.children if c.group is group]:
            self._forget(child)
            child.reap(kill=True)

    def _offset(self):
        """clock() - time.monotonic(), now."""
        if self.clock is time.monotonic:
            return 0.0
        return self.clock() - time.monotonic()

    def deadline(self):
        """Earliest hard timeout of the running children, in ``clock`` time."""
        if not self.children:
            return None
        return min(child.deadline for child in self.children) + self._offset()

    def expire(self, now):
        """Kill the children past their deadline at ``now`` (``clock`` time);
        returns their failure events."""
        # The two clocks are read at slightly different moments; a child due
        # within CLOCK_SLACK counts as due, so expire(deadline()) always fires.
        limit = now - self._offset() + CLOCK_SLACK
        events = []
        for child in [c for c in self.children if c.deadline <= limit]:
            if child not in self.children:
                continue  # cancelled by a sibling's answer meanwhile
            self._forget(child)
            child.reap(kill=True)
            events.extend(child.on_timeout())
        return events

    def stop(self):
        """Kill and reap every child (no events), and stop the relays."""
        for child in list(self.children):
            self._forget(child)
            child.reap(kill=True)
        self.applier.close()
