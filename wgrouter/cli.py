"""Command line: run, status, apply, switch, check-config, diagnose, setup, relay-server, relay-client."""

import argparse
import json
import os
import sys

import wgrouter

USAGE_EXIT = 2


def _root(args):
    return getattr(args, "root", None) or os.environ.get("WGROUTER_ROOT") or "/"


def cmd_run(args):
    from wgrouter import config
    from wgrouter import daemon
    restart = tuple(args.restart_cmd.split()) if args.restart_cmd else ("ifup",)
    root = _root(args)
    try:
        try:
            d = daemon.Daemon(root, restart_cmd=restart, use_ubus=not args.no_ubus)
        except config.ConfigError as e:
            # wait for a fixed config instead of procd's respawn loop
            cfg = daemon.wait_for_config(root, e)
            if cfg is None:
                return 0
            d = daemon.Daemon(root, cfg=cfg, restart_cmd=restart, use_ubus=not args.no_ubus)
        d.run()
    except wgrouter.Error as e:
        # bad config or another daemon running: say so once, apply nothing
        print("wgrouter: %s" % e, file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args):
    from wgrouter import config
    root = _root(args)
    try:
        cfg = config.load(root)
    except wgrouter.Error as e:
        print("wgrouter: %s" % e, file=sys.stderr)
        return 1
    for warning in config.check(root) + _dns_warnings(cfg):
        print("warning: %s" % warning, file=sys.stderr)
    errors = config.defeats(root)
    for error in errors:
        print("error: %s" % error, file=sys.stderr)
    peers = sum(len(t.peers) for t in cfg.tunnels)
    if errors:
        print("wgrouter: %d error(s): the daemon runs, but cannot keep those tunnels up" % len(errors),
              file=sys.stderr)
        return 1
    print("configuration ok: %d WAN(s) (%s), %d tunnel(s), %d peer(s)" % (
        len(cfg.wans), ", ".join(w.name for w in cfg.wans), len(cfg.tunnels), peers))
    for peer in cfg.peers():
        for relay in peer.relays:
            print("tunnel '%s', peer '%s': TCP relay %s (udp-over-tcp framing)" % (peer.tunnel, peer.label, relay))
    return 0


def cmd_setup(args):
    from wgrouter import install
    root = _root(args)
    try:
        notes = install.restore(root) if args.restore else install.setup(root, dry_run=args.dry_run)
    except (wgrouter.Error, OSError) as e:
        print("wgrouter setup: %s" % e, file=sys.stderr)
        return 1
    for note in notes:
        print(note)
    if args.dry_run:
        print("(dry run: nothing was written)")
    return 0


def _dns_warnings(cfg):
    """Endpoint names on a router without dnspython: they keep netifd's address."""
    from wgrouter import model
    from wgrouter import resolve
    if resolve.available():
        return []
    return ["tunnel '%s', peer '%s': endpoint '%s' is a name and %s"
            % (peer.tunnel, peer.label, endpoint.host, resolve.NO_DNSPYTHON)
            for peer in cfg.peers() for endpoint in peer.endpoints if not model.is_ip(endpoint.host)]


def _ask(args, request):
    from wgrouter import control
    try:
        reply = control.request(_root(args), request)
    except wgrouter.Error as e:
        print("wgrouter: %s" % e, file=sys.stderr)
        return None
    if "error" in reply:
        print("wgrouter: %s" % reply["error"], file=sys.stderr)
        return None
    return reply


def format_status(st):
    from wgrouter import model

    lines = ["wgrouter %s, pid %s, up %ss" % (st.get("version"), st.get("pid"), st.get("uptime"))]
    wans = st.get("wans") or {}
    if wans:
        parts = []
        for name, w in wans.items():
            flags = "up" if w.get("up") else "down"
            if w.get("up") and not w.get("healthy", True):
                flags = "up, unhealthy"
            if w.get("families"):
                flags += ", " + "+".join(f.replace("ip", "IP") for f in w["families"])
            if w.get("active"):
                flags += ", active"
            parts.append("%s (%s)" % (name, flags))
        lines.append("WANs: " + "; ".join(parts))
    for tname, t in (st.get("tunnels") or {}).items():
        lines.append("tunnel %s" % tname)
        for pname, p in (t.get("peers") or {}).items():
            lines.append(
                "  peer %-12s %-10s wan %-6s endpoint %s (%s) keepalive %ss handshake %s ago rx %s tx %s%s" % (
                    p.get("label") or pname[:8], p.get("state"), p.get("wan") or "-", p.get("endpoint") or "-",
                    p.get("endpoint_source") or "-", p.get("keepalive"), model.age(p.get("handshake_age")),
                    p.get("rx"), p.get("tx"),
                    ", last step: %s" % p["last_step"] if p.get("last_step") else ""))
    events = st.get("events") or []
    if events:
        lines.append("recent events:")
        import time
        for e in events[-10:]:
            lines.append("  %s %s" % (time.strftime("%H:%M:%S", time.localtime(e.get("time", 0))), e.get("text")))
    return "\n".join(lines)


def cmd_status(args):
    reply = _ask(args, {"method": "status"})
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        print(format_status(reply))
    return 0


def cmd_apply(args):
    reply = _ask(args, {"method": "reapply"})
    if reply is None:
        return 1
    print("re-applying every managed peer")
    return 0


def cmd_switch(args):
    reply = _ask(args, {"method": "switch", "wan": args.wan})
    if reply is None:
        return 1
    print("WAN selection: %s" % reply.get("wan"))
    return 0


def cmd_diagnose(args):
    try:
        from wgrouter import diagnose
    except ImportError:
        print("wgrouter: diagnose is not available in this version", file=sys.stderr)
        return 1
    return diagnose.main(_root(args), as_json=args.json)


def cmd_relay_server(args):
    from wgrouter import relay
    p = relay.server_parser(argparse.ArgumentParser(prog="wgrouter relay-server", description=_RELAY_SERVER))
    return relay.server_main(p.parse_args(args))


def cmd_relay_client(args):
    from wgrouter import relay
    p = relay.client_parser(argparse.ArgumentParser(prog="wgrouter relay-client", description=_RELAY_CLIENT))
    return relay.client_main(p.parse_args(args))


_RELAY_SERVER = "WireGuard over TCP: the relay on a VPN server (udp-over-tcp framing, one UDP target only)"
_RELAY_CLIENT = "WireGuard over TCP: one relay client in its own process (commands on stdin)"


_RELAY_COMMANDS = {"relay-server": (_RELAY_SERVER, cmd_relay_server),
                   "relay-client": (_RELAY_CLIENT, cmd_relay_client)}


def _relay_parsers(sub):
    # listed here for --help; main() hands their arguments to the relay
    # module, imported only when a relay command runs
    for name, (text, _) in _RELAY_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS,
                        help="filesystem root holding etc/config and var/run (default /)")
    p = argparse.ArgumentParser(prog="wgrouter", parents=[common],
                                description="Keeps WireGuard tunnels up across two WANs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    r = sub.add_parser("run", parents=[common], help="run the daemon in the foreground (procd starts it)")
    r.add_argument("--no-ubus", action="store_true", help="do not register the ubus object")
    r.add_argument("--restart-cmd", help="command used to restart a tunnel interface (default: ifup)")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("status", parents=[common], help="show tunnels, peers, WANs and recent events")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    a = sub.add_parser("apply", parents=[common], help="re-apply every managed peer now")
    a.set_defaults(func=cmd_apply)
    w = sub.add_parser("switch", parents=[common], help="pin a WAN, or 'auto' to let wgrouter choose")
    w.add_argument("wan")
    w.set_defaults(func=cmd_switch)
    c = sub.add_parser("check-config", parents=[common], help="validate /etc/config/wgrouter and the WireGuard interfaces")
    c.set_defaults(func=cmd_check_config)
    u = sub.add_parser("setup", parents=[common],
                       help="write /etc/config/wgrouter from this router's WANs and WireGuard interfaces "
                            "while it is the shipped example, and set nohostroute on the managed tunnels "
                            "(the install runs it)")
    u.add_argument("--dry-run", action="store_true", help="print what would be written, change nothing")
    u.add_argument("--restore", action="store_true",
                   help="put back the nohostroute values setup changed (package removal runs it)")
    u.set_defaults(func=cmd_setup)
    d = sub.add_parser("diagnose", parents=[common], help="run the WireGuard troubleshooting checklist")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_diagnose)
    _relay_parsers(sub)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _RELAY_COMMANDS:
        return _RELAY_COMMANDS[argv[0]][1](argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)
