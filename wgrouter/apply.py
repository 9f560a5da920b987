"""Put a peer on a WAN, and take it off again, by running ip/conntrack and
setting the endpoint in process (``wgrouter.wg``, `wg set` as the fallback).

Order matters (see ``Applier.apply_path``): the new host route replaces the
old one atomically, stale conntrack entries go before the endpoint is set
again, the old route goes last, and one datagram through the tunnel starts
a handshake at once.  Every host route and ip rule wgrouter adds is recorded
in a JSON state file, so a restarted daemon removes only what it added and
never adds a rule twice.  Host routes carry a route protocol of their own
(ROUTE_PROTO), so that they can be told from netifd's (``proto static``)
by ``ip route`` and by ``wgrouter diagnose``, and a delete can only take
wgrouter's route.
"""

import json
import socket
import struct

import wgrouter
from wgrouter import model
from wgrouter import runfiles
from wgrouter import runner as runner_mod
from wgrouter import wg as wg_mod


class UnknownAction(wgrouter.Error):
    """action the applier does not handle"""


class StepFailed(wgrouter.Error):
    """a command failed"""


# Our `to ENDPOINT lookup TABLE` rules sit before mwan3's (1000+), so the
# endpoint route in the WAN's table wins over the connmark of an old flow.
RULE_PREF = 990
# What ip says when the route or rule to delete is not there (any more).
GONE = ("No such process", "No such file", "FIB table does not exist")
# The discard port: the datagram only has to enter the tunnel.
KICK_PORT = 9
# The route protocol of wgrouter's host routes.  netifd's own routes, its
# pinned endpoint route included, are RTPROT_STATIC (4); 119 (0x77, "w") is
# neither a kernel RTPROT_* value nor a name in iproute2's rt_protos.
# `ip route` shows the number, or "wgrouter" with the line "119 wgrouter" in
# /etc/iproute2/rt_protos.
ROUTE_PROTO = 119
ROUTE_PROTO_NAME = "wgrouter"
# What versions before ROUTE_PROTO gave their host routes: a record of
# applied.json without a "proto" was added so (adopted after an upgrade).
LEGACY_PROTO = "static"


def _host(address):
    return "%s/%d" % (address, 128 if model.family(address) == 6 else 32)


def _ip(address, *args):
    argv = ["ip"]
    if model.family(address) == 6:
        argv.append("-6")
    return argv + list(args)


def _table_args(table):
    return [] if table is None else ["table", str(table)]


def route_replace_argv(address, device, gateway, table):
    argv = _ip(address, "route", "replace", _host(address))
    if gateway:
        argv += ["via", gateway]
    return argv + ["dev", device] + _table_args(table) + ["proto", str(ROUTE_PROTO)]


def route_del_argv(address, table, proto=ROUTE_PROTO, device=None, gateway=None):
    """Delete wgrouter's host route only: the kernel matches the protocol,
    so netifd's route to the same endpoint (proto static) stays.  A route
    an earlier version added as proto static is named by its device and
    gateway as well, which netifd's pin through another WAN does not share."""
    argv = _ip(address, "route", "del", _host(address)) + _table_args(table)
    argv += ["proto", str(proto)]
    if str(proto) == LEGACY_PROTO:
        if gateway:
            argv += ["via", gateway]
        if device:
            argv += ["dev", device]
    return argv


def rule_argv(verb, address, table):
    return _ip(address, "rule", verb, "to", _host(address), "lookup", str(table), "pref", str(RULE_PREF))


def kick_target(peer):
    """The address one datagram goes to so that it enters the tunnel towards
    ``peer``: its probe target, else a host inside its first allowed IP."""
    if peer is None:
        return None
    if peer.probe:
        return peer.probe
    for prefix in peer.allowed_ips:
        address, _, length = prefix.partition("/")
        if ":" in address:
            continue
        bits = int(length) if length else 32
        if bits == 0:
            # 0.0.0.0/0: any address outside the router's own networks goes
            # to this peer; the socket is bound to the tunnel device anyway.
            return "192.0.2.1"
        if bits >= 31:
            return address
        value = struct.unpack("!I", socket.inet_aton(address))[0]
        mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
        return socket.inet_ntoa(struct.pack("!I", (value & mask) + 1))
    for prefix in peer.allowed_ips:
        address, _, length = prefix.partition("/")
        if ":" in address and length not in ("0",):
            return address
    return None


def send_kick(device, target):
    """Send one empty UDP datagram to target:9 out of ``device`` (the tunnel).

    Bound to the tunnel device, the kernel sends it there even without a
    route, and WireGuard starts a handshake with the peer owning ``target``.
    """
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode() + b"\0")
        sock.setblocking(False)
        sock.sendto(b"", (target, KICK_PORT))
    finally:
        sock.close()


def _table(value):
    return value is None or (type(value) is int and 0 < value < 2 ** 32)


def _route_record(r):
    """A route record as Applier.apply_path writes it."""
    return (isinstance(r, dict) and isinstance(r.get("address"), str) and model.is_ip(r["address"])
            and _table(r.get("table")) and isinstance(r.get("device"), str)
            and isinstance(r.get("gateway"), (str, type(None))) and isinstance(r.get("owners"), list)
            and all(isinstance(o, list) and len(o) == 2 and all(isinstance(x, str) for x in o)
                    for o in r["owners"]))


def _rule_record(r):
    """A rule record as Applier.apply_path writes it (always in a table)."""
    return (isinstance(r, dict) and isinstance(r.get("address"), str) and model.is_ip(r["address"])
            and r.get("table") is not None and _table(r.get("table")))


class State:
    """The host routes and rules wgrouter added, as a JSON file.

    routes: {"ADDR table": {"address", "table", "device", "gateway", "proto",
                            "owners": [[tunnel, key], ...]}}
            (no owners: nobody uses it, but deleting it failed; it is retried;
            no proto: an earlier version added it as proto static)
    rules:  {"ADDR table": {"address", "table", "pref"}}
    """

    def __init__(self, path):
        self.path = path
        self.routes = {}
        self.rules = {}
        self.problems = []  # what load() refused, for the daemon's log
        self.load()

    @staticmethod
    def key(address, table):
        return "%s %s" % (address, "main" if table is None else table)

    def load(self):
        """Read the file, record by record.  What is refused (an unreadable
        file, a record that is not one we write) is left out and said in
        ``problems``: we can then only leak a route, never delete one we did
        not add, nor run a command with what the file made up."""
        try:
            data = runfiles.read_json(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.problems.append("%s ignored: %s" % (self.path, e))
            return
        if not isinstance(data, dict):
            self.problems.append("%s ignored: not a JSON object" % self.path)
            return
        for name, valid, into in (("routes", _route_record, self.routes),
                                  ("rules", _rule_record, self.rules)):
            records = data.get(name, {})
            if not isinstance(records, dict):
                self.problems.append("%s: %s ignored: not a JSON object" % (self.path, name))
                continue
            bad = []
            for key, record in records.items():
                if valid(record) and key == self.key(record["address"], record["table"]):
                    into[key] = record
                else:
                    bad.append(key)
            if bad:
                self.problems.append("%s: %d %s record(s) ignored, not as wgrouter writes them "
                                     "(first: %r)" % (self.path, len(bad), name[:-1], bad[0][:80]))

    def save(self):
        runfiles.write_atomic(self.path, json.dumps({"routes": self.routes, "rules": self.rules},
                                                   sort_keys=True, indent=1))

    def owned_by(self, owner):
        return [k for k, r in self.routes.items() if owner in [tuple(o) for o in r["owners"]]]


class Applier:
    """Executes ApplyPath, RemovePath and RestartTunnel, synchronously."""

    def __init__(
        self,
        runner,
        state_path,
        restart_cmd=("ifup",),
        conntrack_flush=True,
        config=None,
        kick=send_kick,
        wg=None,
        relays=None,
    ):
        self.runner = runner
        # wg.Client(()) answers for no device: every endpoint is set with `wg set`
        self.wg = wg if wg is not None else wg_mod.Client()
        self.state = State(state_path)
        self.restart_cmd = tuple(restart_cmd)
        self.conntrack_flush = conntrack_flush
        self.kick = kick
        self.peers = {}
        if config is not None:
            self.peers = {peer.key: peer for peer in config.peers()}
        self.conntrack_missing = False
        self.notes = []
        self.settings = config.settings if config is not None else model.Settings()
        # the peers' TCP relays: one thread (wgrouter.relay.Relays), started
        # with the first relay; owner -> (relay address, port, device, local
        # port, the name the thread knows it by)
        self.relays = relays
        self.relay_links = {}

    def reconfigure(self, config):
        """New peers (for the kick target) and conntrack setting."""
        self.peers = {peer.key: peer for peer in config.peers()}
        self.conntrack_flush = config.settings.conntrack_flush
        self.settings = config.settings

    # ------------------------------------------------------------ helpers

    def _run(self, argv, ok_rcs=(0,), ok_err=(), missing=False):
        try:
            result = self.runner.run(argv)
        except runner_mod.CommandMissing as e:
            if missing:
                raise
            raise StepFailed("%s: %s" % (" ".join(argv), e)) from None
        except OSError as e:  # a runner that lets a failed fork through
            raise StepFailed("%s: cannot start: %s" % (" ".join(argv), e)) from None
        if result.rc in ok_rcs:
            return result
        err = result.err.strip()
        if any(text in err for text in ok_err):
            return result
        raise StepFailed("%s: rc %d: %s" % (" ".join(argv), result.rc, err or result.out.strip()))

    def _drop(self, key, steps):
        """Delete the recorded route ``key`` (and its rule); gone already is fine."""
        record = self.state.routes[key]
        address, table = record["address"], record["table"]
        if key in self.state.rules:
            self._run(rule_argv("del", address, table), ok_err=GONE)
            del self.state.rules[key]
            steps.append("rule del %s" % key)
        self._run(route_del_argv(address, table, record.get("proto", LEGACY_PROTO),
                                 record.get("device"), record.get("gateway")), ok_err=GONE)
        del self.state.routes[key]
        steps.append("route del %s" % key)

    def _release(self, owner, keep, steps):
        """Give up ``owner``'s share of every recorded route but ``keep``;
        routes nobody owns any more are deleted."""
        for key in self.state.owned_by(owner):
            if key == keep:
                continue
            record = self.state.routes[key]
            record["owners"] = [o for o in record["owners"] if tuple(o) != owner]
            if not record["owners"]:
                self._drop(key, steps)

    def _retry_drops(self, keep, steps):
        """Delete the routes an earlier delete failed on: they stay recorded
        without owners until it works.  Their failure is noted, not this
        action's: it is retried on every apply and on stop."""
        for key in [k for k, r in self.state.routes.items() if not r["owners"] and k != keep]:
            try:
                self._drop(key, steps)
            except StepFailed as e:
                self.notes.append("old route not deleted yet, retried on the next apply: %s" % e)

    def _event(self, action, error, steps):
        note = "; ".join(self.notes) if self.notes else None
        self.notes = []
        return model.Applied(action=action, ok=not error, error=error, steps=steps, note=note)

    # ------------------------------------------------------------ actions

    def execute(self, action):
        """Run one action; returns model.Applied."""
        if isinstance(action, model.ApplyPath):
            return self.apply_path(action)
        if isinstance(action, model.RemovePath):
            return self.remove_path(action)
        if isinstance(action, model.RestartTunnel):
            return self.restart(action)
        if isinstance(action, model.StopRelay):
            return self.stop_relay(action)
        raise UnknownAction("action the applier does not handle: %r" % (action,))

    def apply_path(self, a):
        steps = []
        error = ""
        owner = (a.tunnel, a.peer)
        key = State.key(a.address, a.table)
        try:
            try:
                # 1. the host route, replaced in place: never a moment without one
                self._run(route_replace_argv(a.address, a.device, a.gateway, a.table))
                record = self.state.routes.get(key)
                owners = [] if record is None else [tuple(o) for o in record["owners"]]
                if owner not in owners:
                    owners.append(owner)
                self.state.routes[key] = {
                    "address": a.address,
                    "table": a.table,
                    "device": a.device,
                    "gateway": a.gateway,
                    # `replace` took the earlier route's place (same
                    # destination, table and metric) whatever its protocol
                    "proto": ROUTE_PROTO,
                    "owners": [list(o) for o in owners],
                }
                steps.append("route %s" % key)
                if a.table is not None and key not in self.state.rules:
                    # `ip rule add` refuses an identical rule: one copy only.
                    self._run(rule_argv("add", a.address, a.table), ok_err=("File exists",))
                    self.state.rules[key] = {"address": a.address, "table": a.table, "pref": RULE_PREF}
                    steps.append("rule %s" % key)
            finally:
                self.state.save()
            # 2. conntrack entries that pin the flow to the old path
            relay = a.transport == "tcp-relay"
            if self.conntrack_flush and not self.conntrack_missing and not relay:
                argv = ["conntrack", "-D", "-p", "udp",
                        "--orig-dst", a.address, "--orig-port-dst", str(a.port)]
                if model.family(a.address) == 6:
                    argv[2:2] = ["-f", "ipv6"]
                try:
                    # rc 1: no entry matched
                    self._run(argv, ok_rcs=(0, 1), missing=True)
                    steps.append("conntrack")
                except runner_mod.CommandMissing:
                    self.conntrack_missing = True
                    self.notes.append("conntrack not installed: stale flows are not flushed")
            # 3. endpoint and keepalive; re-setting clears the cached source.
            # On a relay: its connection through the WAN's device first, and
            # its local socket is the endpoint
            if relay:
                port = self._relay(a, steps)
                self._set_endpoint(a, "127.0.0.1", port)
            else:
                self._set_endpoint(a)
            steps.append("endpoint")
            # 4. the routes this peer used before, if nobody else uses them
            try:
                self._retry_drops(key, steps)
                self._release(owner, key, steps)
            finally:
                self.state.save()
            # 5. one datagram through the tunnel: a handshake starts now
            target = kick_target(self.peers.get(owner))
            if target is not None and self.kick is not None:
                try:
                    self.kick(a.tunnel, target)
                except OSError as e:
                    raise StepFailed("kick %s via %s: %s" % (target, a.tunnel, e)) from None
                steps.append("kick")
        except StepFailed as e:
            error = str(e)
        return self._event(a, error, steps)

    def _set_endpoint(self, a, address=None, port=None):
        """This one peer's endpoint and keepalive, nothing else: in process
        (update only: a peer netifd removed meanwhile is not created again),
        else `wg set`."""
        address = a.address if address is None else address
        port = a.port if port is None else port
        try:
            self.wg.set_peer(a.tunnel, a.peer, address, port, a.keepalive)
            return
        except wg_mod.Unavailable:
            pass
        except wg_mod.WgError as e:
            raise StepFailed("set endpoint %s of %s: %s" % (model.Endpoint(address, port), a.tunnel, e)) from None
        self._run(
            [
                "wg", "set", a.tunnel, "peer", a.peer,
                "endpoint", str(model.Endpoint(address, port)),
                "persistent-keepalive", str(a.keepalive),
            ]
        )

    def _relay_name(self, owner):
        peer = self.peers.get(owner)
        return "%s peer %s" % (owner[0], peer.label if peer is not None else owner[1][:8])

    def _relay(self, a, steps):
        """Start the peer's relay to a.address:a.port through a.device, or
        move its connection there; the local port WireGuard is to send to."""
        owner = (a.tunnel, a.peer)
        if self.relays is None:
            from wgrouter import relay as relay_mod  # only once a peer needs a relay
            s = self.settings
            self.relays = relay_mod.Relays(keepalive=a.keepalive or 25, backoff_base=s.backoff_base,
                                           backoff_max=s.backoff_max, log=wgrouter.log)
        link = self.relay_links.get(owner)
        if link is not None and link[:2] == (a.address, a.port):
            if link[2] != a.device:
                self.relays.move(link[4], a.device)
                self.relay_links[owner] = (a.address, a.port, a.device, link[3], link[4])
                steps.append("relay moved")
            return link[3]
        name = link[4] if link is not None else self._relay_name(owner)  # start replaces it
        try:
            port = self.relays.start(name, (a.address, a.port), a.device, keepalive=a.keepalive or None)
        except wgrouter.Error as e:
            self.relay_links.pop(owner, None)
            raise StepFailed(str(e)) from None
        self.relay_links[owner] = (a.address, a.port, a.device, port, name)
        steps.append("relay started")
        return port

    def stop_relay(self, a):
        """Close the peer's relay (the core has put it on UDP again, or it is gone)."""
        steps = []
        owner = (a.tunnel, a.peer)
        link = self.relay_links.pop(owner, None)
        if link is not None:
            self.relays.stop(link[4])
            steps.append("relay stopped")
        return self._event(a, "", steps)

    def relay_status(self):
        """{(tunnel, key): relay.RelayStatus} of the running relays."""
        if self.relays is None:
            return {}
        out = {}
        for owner, link in self.relay_links.items():
            st = self.relays.status(link[4])
            if st is not None:
                out[owner] = st
        return out

    def close(self):
        """Stop every relay and their thread."""
        if self.relays is not None:
            self.relays.close()
            self.relays = None
        self.relay_links = {}

    def remove_path(self, a):
        steps = []
        error = ""
        owner = (a.tunnel, a.peer)
        key = State.key(a.address, a.table)
        record = self.state.routes.get(key)
        try:
            self._retry_drops(key, steps)
            if record is not None:
                record["owners"] = [o for o in record["owners"] if tuple(o) != owner]
                if not record["owners"]:
                    self._drop(key, steps)
        except StepFailed as e:
            error = str(e)
        finally:
            self.state.save()
        return self._event(a, error, steps)

    def restart(self, a):
        steps = []
        error = ""
        try:
            self._run(list(self.restart_cmd) + [a.tunnel])
            steps.append("restart")
        except StepFailed as e:
            error = str(e)
        return self._event(a, error, steps)

    def cleanup(self):
        """Remove every route and rule we recorded; returns the errors."""
        errors = []
        steps = []
        for key in list(self.state.routes):
            try:
                self._drop(key, steps)
            except StepFailed as e:
                errors.append(str(e))
        # rules whose route record is gone (should not happen, but never leak)
        for key, rule in list(self.state.rules.items()):
            try:
                self._run(rule_argv("del", rule["address"], rule["table"]), ok_err=GONE)
                del self.state.rules[key]
            except StepFailed as e:
                errors.append(str(e))
        self.state.save()
        return errors
