"""`wgrouter diagnose`: the WireGuard troubleshooting checklist as one command.

``gather`` reads the system (netlink dumps, `wg show all dump`, `ip route
get`, `conntrack -L`, sysctls under /proc/sys, DNS through each WAN,
<root>/etc/config/firewall) into a ``Facts``; ``evaluate`` is pure: config,
facts and ``now`` in, a list of findings out.  Nothing here writes to the
system: no route, rule, wg, conntrack or sysctl change.

A finding is a dict {"check", "status" ("ok"|"warn"|"fail"), "tunnel",
"peer", "summary", "evidence", "fix"}; ``run`` returns {"findings": [...],
"worst": status}, the ubus reply; ``main`` prints it and returns the exit
code 0 (ok), 1 (warn) or 2 (fail).
"""

import dataclasses
import ipaddress
import json
import os
import socket
import sys
import time
import typing

import wgrouter
from wgrouter import model
from wgrouter import wgdump

OK = "ok"
WARN = "warn"
FAIL = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}

# Outer headers WireGuard adds to every inner packet: IP (20 or 40) + UDP 8
# + WireGuard data header 16 + Poly1305 tag 16.
OVERHEAD_V4 = 60
OVERHEAD_V6 = 80
# The smallest MTU an IPv6 inner packet may see (RFC 8200); a tunnel below it
# cannot carry IPv6 at all.
IPV6_MIN_MTU = 1280
# A peer with keepalive on sends at least every keepalive seconds and WireGuard
# re-handshakes every 120 s (REKEY_AFTER_TIME) while traffic flows; a session
# is dead after 180 s (REJECT_AFTER_TIME) without a new handshake.
REJECT_AFTER_TIME = 180
# Common NAT UDP mapping timeouts are 30-120 s; a keepalive above 25 s may
# let the mapping expire between two keepalives.
NAT_SAFE_KEEPALIVE = 25
# Address ranges behind which a NAT is likely: RFC 1918 and CGNAT (RFC 6598).
NAT_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
# rp_filter values: 0 off, 1 strict, 2 loose; the kernel uses max(all, dev).
RP_STRICT = 1
# Seconds one resolver child may take per server (UDP then TCP) plus start-up.
RESOLVE_SERVER_TIMEOUT = 2.0
RESOLVE_OVERHEAD = 3.0
FIREWALL = "etc/config/firewall"
# Key of the DNS answer asked through /etc/resolv.conf (WANs with neither
# dns_server nor servers learned by netifd).
SYSTEM_RESOLVER = "(system)"


# ------------------------------------------------------------------ facts


@dataclasses.dataclass
class Facts:
    """What ``gather`` saw; every field has a harmless default so tests
    build only what a check needs."""

    links: list = dataclasses.field(default_factory=list)  # netlink.dump_links()
    addrs: list = dataclasses.field(default_factory=list)  # netlink.dump_addrs()
    wans: dict = dataclasses.field(default_factory=dict)  # name -> model.WanState
    wg: dict = dataclasses.field(default_factory=dict)  # device -> wgdump.Device
    wg_error: typing.Optional[str] = None
    # endpoint address -> {"dev", "gateway", "prefsrc", "type", "error", "text"}
    routes: dict = dataclasses.field(default_factory=dict)
    kernel_routes: list = dataclasses.field(default_factory=list)  # netlink.dump_routes()
    # host name -> {wan name: {"addresses": [...]} or {"error": str}}
    dns: dict = dataclasses.field(default_factory=dict)
    # (address, port) -> {"entries": [dict], "error": str|None}
    conntrack: dict = dataclasses.field(default_factory=dict)
    sysctl: dict = dataclasses.field(default_factory=dict)  # "net.ipv4.ip_forward" -> "1"
    # firewall: list of uci.Section, or None when the file does not exist
    firewall: typing.Optional[list] = None
    firewall_error: typing.Optional[str] = None


def parse_route_get(rc, out, err):
    """`ip route get ADDR` -> {"dev", "gateway", "prefsrc", "type", "error", "text"}."""
    text = out.strip().splitlines()[0] if out.strip() else ""
    result = {"dev": None, "gateway": None, "prefsrc": None, "type": "unicast", "error": None,
              "text": text}
    if rc != 0:
        result["error"] = (err.strip() or out.strip() or "ip route get exited %d" % rc)
        result["type"] = None
        return result
    words = text.split()
    if words and words[0] in ("unreachable", "prohibit", "blackhole", "throw", "local",
                              "broadcast", "multicast"):
        result["type"] = words[0]
    for i, word in enumerate(words[:-1]):
        if word == "dev":
            result["dev"] = words[i + 1]
        elif word == "via":
            result["gateway"] = words[i + 1]
        elif word == "src":
            result["prefsrc"] = words[i + 1]
    return result


def parse_conntrack(out):
    """Entries of `conntrack -L` output: [{"src", "dst", "sport", "dport",
    "reply_src", "reply_dst", "mark", "line"}]."""
    entries = []
    for line in out.splitlines():
        words = line.split()
        if not words or "=" not in line:
            continue
        seen = {}
        entry = {"line": line.strip(), "mark": None}
        for word in words:
            key, eq, value = word.partition("=")
            if not eq:
                continue
            count = seen.get(key, 0)
            seen[key] = count + 1
            if key == "mark":
                entry["mark"] = value
            elif count == 0 and key in ("src", "dst", "sport", "dport"):
                entry[key] = value
            elif count == 1 and key in ("src", "dst", "sport", "dport"):
                entry["reply_" + key] = value
        if "src" in entry and "dst" in entry:
            entries.append(entry)
    return entries


def read_sysctls(names, base="/proc/sys"):
    values = {}
    for name in names:
        path = os.path.join(base, name.replace(".", "/"))
        try:
            with open(path) as f:
                values[name] = f.read().strip()
        except OSError:
            values[name] = None
    return values


def _sysctl_names(config, links):
    names = ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"]
    present = {link["ifname"] for link in links}
    for wan in config.wans:
        if wan.device in present:
            names.append("net.ipv4.conf.%s.rp_filter" % wan.device)
    return names


def _dumps():
    from wgrouter import netlink
    return (netlink.dump_links(), netlink.dump_addrs(),
            netlink.dump_routes())


def _resolve(runner, host, wan=None, python=None, servers=None):
    """Ask DNS for ``host`` with the resolver child: through ``wan`` (its
    ``servers``, by default its dns_servers, bound to its device), or the
    system resolver when None."""
    from wgrouter import resolve
    if servers is None:
        servers = list(wan.dns_servers) if wan is not None else []
    # -c with an explicit path: the child imports this very copy of the
    # package whatever the working directory and PYTHONPATH are.
    home = os.path.dirname(os.path.dirname(os.path.abspath(wgrouter.__file__)))
    code = ("import sys; sys.path.insert(0, %r); from wgrouter import resolve; "
            "sys.exit(resolve.main())" % home)
    argv = [python or sys.executable, "-c", code, "--timeout", "%g" % RESOLVE_SERVER_TIMEOUT]
    if servers:
        argv += ["--device", wan.device]
        for server in servers:
            argv += ["--server", server]
    argv.append(host)
    limit = 2 * RESOLVE_SERVER_TIMEOUT * max(1, len(servers) or len(resolve.nameservers())) + RESOLVE_OVERHEAD
    result = runner.run(argv, timeout=limit)
    line = result.out.strip().splitlines()[-1] if result.out.strip() else ""
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    via = "%s (%s)" % (wan.name, ", ".join(servers)) if servers else "the system resolver"
    if isinstance(reply, dict) and isinstance(reply.get("addresses"), list):
        return {"addresses": [str(a) for a in reply["addresses"]], "via": via}
    error = reply.get("error") if isinstance(reply, dict) else None
    return {"error": error or (result.err.strip() or "resolver exited %d" % result.rc)[-200:],
            "via": via}


def gather(root, config, runner, dumps=None, sysctls=None):
    """Read everything ``evaluate`` needs.  ``dumps()`` -> (links, addrs,
    routes) and ``sysctls(names)`` -> {name: value} default to netlink and
    /proc/sys of the namespace we run in."""
    from wgrouter import kernel
    from wgrouter import runner as runner_mod
    from wgrouter import uci

    facts = Facts()
    links, addrs, routes = (dumps or _dumps)()
    facts.links, facts.addrs, facts.kernel_routes = links, addrs, routes
    facts.wans = kernel.wan_states(config.wans, links, addrs, routes, mwan3=config.settings.mwan3)
    present = {link["ifname"] for link in links}

    try:
        r = runner.run(["wg", "show", "all", "dump"])
        if r.rc == 0:
            # wireguard-go's UAPI sockets are shared by every namespace:
            # keep only devices that exist here.
            facts.wg = {k: v for k, v in wgdump.parse_devices(r.out).items() if k in present}
        else:
            facts.wg_error = r.err.strip() or "wg show exited %d" % r.rc
    except runner_mod.CommandMissing as e:
        facts.wg_error = str(e)
    except wgrouter.Error as e:
        facts.wg_error = str(e)

    endpoints = set()
    for tunnel in config.tunnels:
        dev = facts.wg.get(tunnel.name)
        for peer in tunnel.peers:
            info = dev.peers.get(peer.public_key) if dev else None
            if info and info.endpoint:
                try:
                    endpoints.add(model.split_endpoint(info.endpoint) + (dev.fwmark,))
                except ValueError:
                    pass
    for address, port, fwmark in sorted(endpoints):
        argv = ["ip"] + (["-6"] if ":" in address else []) + ["route", "get", address]
        if fwmark:
            argv += ["mark", "0x%x" % fwmark]
        try:
            r = runner.run(argv)
            facts.routes[address] = parse_route_get(r.rc, r.out, r.err)
        except runner_mod.CommandMissing as e:
            facts.routes[address] = parse_route_get(127, "", str(e))
        argv = ["conntrack", "-L", "-p", "udp", "--orig-dst", address, "--orig-port-dst", str(port)]
        if ":" in address:
            argv[2:2] = ["-f", "ipv6"]
        try:
            r = runner.run(argv)
            if r.rc == 0:
                facts.conntrack[(address, port)] = {"entries": parse_conntrack(r.out), "error": None}
            else:
                lines = r.err.strip().splitlines()
                error = lines[-1] if lines else "conntrack exited %d" % r.rc
                facts.conntrack[(address, port)] = {"entries": [], "error": error}
        except runner_mod.CommandMissing as e:
            facts.conntrack[(address, port)] = {"entries": [], "error": str(e)}

    from wgrouter import resolve
    hosts = sorted({e.host for p in config.peers() for e in p.endpoints if not model.is_ip(e.host)})
    for host in hosts:
        answers = {}
        system = False
        for wan in config.wans:
            state = facts.wans.get(wan.name)
            if state is None or not state.up:
                answers[wan.name] = {"error": "WAN is down, not asked", "via": wan.name, "skipped": True}
                continue
            servers = list(resolve.servers_for(wan.name, wan.dns_servers, root))
            if not servers:
                system = True  # one unbound query below serves every such WAN
                continue
            try:
                answers[wan.name] = _resolve(runner, host, wan, servers=servers)
            except runner_mod.CommandMissing as e:
                answers[wan.name] = {"error": str(e), "via": wan.name}
        if system:
            try:
                answers[SYSTEM_RESOLVER] = _resolve(runner, host)
            except runner_mod.CommandMissing as e:
                answers[SYSTEM_RESOLVER] = {"error": str(e), "via": "the system resolver"}
        facts.dns[host] = answers

    facts.sysctl = (sysctls or read_sysctls)(_sysctl_names(config, links))

    path = os.path.join(root, FIREWALL)
    if os.path.exists(path):
        try:
            facts.firewall = uci.load(path)
        except (OSError, wgrouter.Error) as e:
            facts.firewall_error = str(e)
    return facts


# ------------------------------------------------------------------ checks


def finding(check, status, summary, evidence="", fix=None, tunnel=None, peer=None):
    return {"check": check, "status": status, "tunnel": tunnel, "peer": peer,
            "summary": summary, "evidence": evidence, "fix": fix}


def _net(text):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _nat_likely(address):
    try:
        ip = ipaddress.ip_address(address)
    except (TypeError, ValueError):
        return False
    return any(ip in net for net in NAT_RANGES)


def _wan_of_device(config, device):
    for wan in config.wans:
        if wan.device == device:
            return wan
    return None


def _link(facts, name):
    for link in facts.links:
        if link["ifname"] == name:
            return link
    return None


def _local_subnets(facts, exclude=()):
    """[(network, device, address)] of the router's own addresses."""
    names = {link["ifindex"]: link["ifname"] for link in facts.links}
    out = []
    for a in facts.addrs:
        dev = names.get(a["ifindex"])
        if dev is None or dev in exclude or dev == "lo" or a.get("address") is None:
            continue
        if a.get("scope", 0) not in (0,):  # global addresses only (not link/host scope)
            continue
        net = ipaddress.ip_network("%s/%d" % (a["address"], a["prefixlen"]), strict=False)
        if net.is_loopback:
            continue
        out.append((net, dev, a["address"]))
    return out


def check_handshake(config, peer, info, now):
    stats = info  # wg.PeerInfo
    who = dict(tunnel=peer.tunnel, peer=peer.label)
    limit = config.settings.handshake_timeout
    evidence = "latest handshake %s, rx %d B, tx %d B, keepalive %s" % (
        "never" if not stats.latest_handshake else "%s ago" % model.age(now - stats.latest_handshake),
        stats.rx, stats.tx, "%ds" % stats.keepalive if stats.keepalive else "off")
    if not stats.latest_handshake:
        return finding("handshake", FAIL, "no handshake with the peer ever", evidence,
                       "check that the server runs and answers on %s, that its public key and this "
                       "router's key match, and that UDP to it is not blocked"
                       % (stats.endpoint or "its endpoint"),
                       **who)
    age = now - stats.latest_handshake
    if age > limit:
        if stats.keepalive:
            return finding("handshake", FAIL, "last handshake %s ago (limit %gs) despite keepalive: "
                           "the peer does not answer" % (model.age(age), limit), evidence,
                           "check the path to the endpoint (route, WAN, conntrack findings), that the "
                           "server is up, and re-set the endpoint: wgrouter apply", **who)
        return finding("handshake", WARN, "last handshake %s ago (limit %gs), keepalive off: an idle "
                       "tunnel or a dead peer" % (model.age(age), limit), evidence,
                       "send traffic through the tunnel or set persistent_keepalive to tell them apart",
                       **who)
    return finding("handshake", OK, "last handshake %s ago" % model.age(age), evidence, None, **who)


def check_keepalive(config, peer, info, wan_in_use, facts):
    """NAT in the path (private or CGNAT WAN address) needs keepalive."""
    who = dict(tunnel=peer.tunnel, peer=peer.label)
    results = []
    kernel_keepalive = info.keepalive
    for wan in config.wans:
        state = facts.wans.get(wan.name)
        if state is None or not state.up or not state.address:
            continue
        nat = _nat_likely(state.address)
        planned = wan.keepalive if wan.keepalive is not None else peer.keepalive
        in_use = wan_in_use is not None and wan.name == wan_in_use.name
        value = kernel_keepalive if in_use else planned
        evidence = "%s address %s%s; keepalive %s%s" % (
            wan.name, state.address, " (private/CGNAT: NAT likely)" if nat else "",
            "%ds" % value if value else "off", " (in use now)" if in_use else " (configured for this WAN)")
        if not nat:
            continue
        if not value:
            results.append(finding(
                "keepalive", WARN, "NAT likely on %s but keepalive is off: the NAT mapping expires and "
                "the peer cannot reach this router" % wan.name, evidence,
                "set option keepalive '%d' on the wan section '%s' in /etc/config/wgrouter (or "
                "persistent_keepalive on the peer)" % (NAT_SAFE_KEEPALIVE, wan.name), **who))
        elif value > NAT_SAFE_KEEPALIVE * 4:
            results.append(finding(
                "keepalive", WARN, "NAT likely on %s and keepalive %ds is longer than common NAT "
                "timeouts" % (wan.name, value), evidence,
                "use a keepalive of %d s on %s" % (NAT_SAFE_KEEPALIVE, wan.name), **who))
        else:
            results.append(finding("keepalive", OK, "NAT likely on %s, keepalive %ds keeps the mapping"
                                   % (wan.name, value), evidence, None, **who))
    return results


def check_endpoint_dns(peer, info, facts):
    """The endpoint in use against the candidates as DNS resolves them now."""
    who = dict(tunnel=peer.tunnel, peer=peer.label)
    in_use = info.endpoint
    if not in_use and not peer.endpoints:
        return finding("endpoint", OK, "no endpoint configured: the peer connects to this router",
                       "wg: endpoint (none)", None, **who)
    if not in_use:
        return finding("endpoint", FAIL, "the peer has no endpoint set", "wg: endpoint (none)",
                       "set endpoint_host on the peer in /etc/config/network, or run: wgrouter apply",
                       **who)
    try:
        address, port = model.split_endpoint(in_use)
    except ValueError:
        return finding("endpoint", WARN, "cannot parse endpoint %r" % in_use, in_use, None, **who)
    current = set()
    notes = []
    names = []
    for candidate in peer.endpoints:
        if model.is_ip(candidate.host):
            current.add((candidate.host, candidate.port))
            continue
        names.append(candidate)
        for wan_name, answer in sorted(facts.dns.get(candidate.host, {}).items()):
            if "addresses" in answer:
                for a in answer["addresses"]:
                    current.add((a, candidate.port))
                notes.append("%s via %s -> %s" % (candidate.host, answer.get("via", wan_name),
                                                  ", ".join(answer["addresses"]) or "nothing"))
            elif not answer.get("skipped"):
                notes.append("%s via %s: %s" % (candidate.host, answer.get("via", wan_name),
                                                answer.get("error")))
    evidence = "in use %s; candidates %s%s" % (
        in_use, ", ".join(str(e) for e in peer.endpoints) or "none",
        "; DNS now: " + "; ".join(sorted(set(notes))) if notes else "")
    resolved_any = any("addresses" in a for c in names for a in facts.dns.get(c.host, {}).values())
    if names and not resolved_any:
        return finding("endpoint", WARN, "no endpoint name could be resolved through any WAN", evidence,
                       "check the WANs' DNS servers (option dns_server in /etc/config/wgrouter)", **who)
    if (address, port) in current:
        return finding("endpoint", OK, "endpoint %s is a current candidate" % in_use, evidence, None, **who)
    if any(a == address for a, _ in current):
        return finding("endpoint", WARN, "endpoint %s: address current, port not among the candidates"
                       % in_use, evidence, "run: wgrouter apply (re-applies the configured endpoint)", **who)
    return finding("endpoint", WARN, "endpoint %s is not what DNS says now (stale resolution)" % in_use,
                   evidence, "re-resolve and re-set the endpoint: wgrouter apply (or ifup %s)" % peer.tunnel,
                   **who)


# Route protocols as `ip route` names them (iproute2 rt_protos), and ours.
_PROTO_NAMES = {2: "kernel", 3: "boot", 4: "static", 16: "dhcp"}
_NETIFD_PROTO = 4  # RTPROT_STATIC: every route netifd adds (netifd system-linux.c system_rt)


def _proto_name(number):
    from wgrouter import apply
    if number == apply.ROUTE_PROTO:
        return "%d (%s)" % (number, apply.ROUTE_PROTO_NAME)
    return _PROTO_NAMES.get(number, str(number))


def _route_text(facts, route):
    dev = _device_name(facts.links, route["oif"]) if route.get("oif") else None
    words = ["%s/%d" % (route["dst"], route["dst_len"])]
    if route.get("gateway"):
        words += ["via", route["gateway"]]
    if dev:
        words += ["dev", dev]
    if route.get("table") not in (None, 254):
        words += ["table", str(route["table"])]
    words += ["proto", _proto_name(route["protocol"]), "metric", str(route.get("metric", 0))]
    return " ".join(words)


def check_host_routes(peer, address, facts):
    """Whose host routes pin the endpoint: wgrouter's carry its own route
    protocol, netifd's are proto static (its host dependency, left in place
    by nohostroute 0); anything else was added by someone else."""
    from wgrouter import apply
    who = dict(tunnel=peer.tunnel, peer=peer.label)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    full = 128 if family == socket.AF_INET6 else 32
    routes = [r for r in facts.kernel_routes
              if r.get("family") == family and r.get("dst") == address and r.get("dst_len") == full
              and r.get("type") == "unicast"]
    if not routes:
        return []
    ours = [r for r in routes if r["protocol"] == apply.ROUTE_PROTO]
    netifd = [r for r in routes if r["protocol"] == _NETIFD_PROTO]
    other = [r for r in routes if r not in ours and r not in netifd]
    results = []
    if ours:
        results.append(finding("hostroute", OK, "the endpoint %s is pinned by wgrouter's host route" % address,
                               "; ".join(_route_text(facts, r) for r in ours), None, **who))
    if netifd:
        results.append(finding(
            "hostroute", WARN, "netifd pins the endpoint %s too (proto static%s)" % (
                address, "; it stays when wgrouter stops" if ours else ""),
            "; ".join(_route_text(facts, r) for r in netifd)
            + " (proto static is netifd's, or a wgrouter before %s-numbered routes left it)" % apply.ROUTE_PROTO,
            "set option nohostroute '1' on interface '%s' in /etc/config/network, then ifup %s"
            % (peer.tunnel, peer.tunnel), **who))
    if other:
        results.append(finding(
            "hostroute", WARN, "a host route to the endpoint %s is neither wgrouter's nor netifd's" % address,
            "; ".join(_route_text(facts, r) for r in other),
            "remove it if it was added by hand (ip route del %s/%d proto ...)" % (address, full), **who))
    return results


def _device_name(links, ifindex):
    for link in links:
        if link.get("ifindex") == ifindex:
            return link.get("ifname")
    return None


def check_route(config, peer, info, facts):
    """Which WAN the kernel uses for the endpoint; loops through a tunnel."""
    who = dict(tunnel=peer.tunnel, peer=peer.label)
    endpoint = info.endpoint
    if not endpoint:
        return None, []
    address, _port = model.split_endpoint(endpoint)
    route = facts.routes.get(address)
    if route is None:
        return None, []
    evidence = "ip route get %s: %s" % (address, route["error"] or route["text"])
    tunnels = {t.name for t in config.tunnels} | set(facts.wg)
    results = []
    wan = _wan_of_device(config, route["dev"]) if route["dev"] else None
    allowed = [n for n in (_net(p) for p in list(info.allowed_ips)) if n is not None]
    covering = [str(n) for n in allowed if n.version == ipaddress.ip_address(address).version
                and ipaddress.ip_address(address) in n]
    if route["error"] or route["type"] not in ("unicast", None) or route["dev"] is None:
        results.append(finding("route", FAIL, "no usable route to the endpoint %s" % address, evidence,
                               "bring a WAN up or add a default route; check ip rule for mwan3 rules",
                               **who))
    elif route["dev"] in tunnels:
        results.append(finding(
            "route", FAIL, "routing loop: the endpoint %s is routed into the tunnel %s itself" % (
                address, route["dev"]),
            evidence + ("; AllowedIPs covering it: %s" % ", ".join(covering) if covering else ""),
            "keep the endpoint out of the routed AllowedIPs, or let a host route pin it to a WAN "
            "(wgrouter does this; with stock netifd remove nohostroute)", **who))
    elif wan is None:
        results.append(finding("route", WARN, "the endpoint %s is routed out of %s, which is no "
                               "configured WAN" % (address, route["dev"]), evidence,
                               "check the routes and ip rules; add the WAN to /etc/config/wgrouter",
                               **who))
    else:
        state = facts.wans.get(wan.name)
        if state is None or not state.up:
            results.append(finding("route", FAIL, "the endpoint %s is routed via %s, which is down" % (
                address, wan.name), evidence + "; %s: %s" % (wan.name, _wan_text(state)),
                "re-apply the path on an up WAN: wgrouter apply", **who))
        else:
            results.append(finding("route", OK, "endpoint %s via %s (%s, gateway %s)" % (
                address, wan.name, wan.device, route["gateway"] or "direct"), evidence, None, **who))
    if covering and route["dev"] not in tunnels and not route["error"]:
        results.append(finding(
            "allowedips_endpoint", OK if wan is not None else WARN,
            "AllowedIPs %s cover the endpoint; a more specific route keeps it on %s" % (
                ", ".join(covering), route["dev"]), evidence,
            None if wan is not None else "pin the endpoint with a host route via a WAN", **who))
    results.extend(check_host_routes(peer, address, facts))
    return wan, results


def _wan_text(state):
    if state is None:
        return "device missing"
    return "%s, address %s, gateway %s" % ("up" if state.up else "down", state.address or "none",
                                           state.gateway or "none")


def check_conntrack(config, peer, info, facts, wan_in_use):
    who = dict(tunnel=peer.tunnel, peer=peer.label)
    endpoint = info.endpoint
    if not endpoint:
        return None
    address, port = model.split_endpoint(endpoint)
    ct = facts.conntrack.get((address, port))
    if ct is None:
        return None
    if ct["error"]:
        return finding("conntrack", WARN, "cannot list conntrack entries", ct["error"],
                       "install conntrack (opkg install conntrack)", **who)
    entries = ct["entries"]
    if not entries:
        return finding("conntrack", OK, "no conntrack entry for udp to %s:%d" % (address, port),
                       "conntrack -L -p udp --orig-dst %s --orig-port-dst %d: none" % (address, port),
                       None, **who)
    by_address = {}
    for name, state in facts.wans.items():
        if state.address:
            by_address[state.address] = name
    names = {link["ifindex"]: link["ifname"] for link in facts.links}
    local = {a["address"]: names.get(a["ifindex"]) for a in facts.addrs if a.get("address")}
    bad = []
    shown = []
    for e in entries:
        src = e.get("src")
        wan_name = by_address.get(src)
        shown.append("src=%s dst=%s sport=%s dport=%s reply dst=%s%s" % (
            src, e.get("dst"), e.get("sport"), e.get("dport"), e.get("reply_dst"),
            " (%s)" % wan_name if wan_name else ""))
        if wan_name is not None:
            state = facts.wans[wan_name]
            if not state.up:
                bad.append("entry from %s on %s, which is down" % (src, wan_name))
            elif wan_in_use is not None and wan_name != wan_in_use.name:
                bad.append("entry from %s on %s, but the route now uses %s"
                           % (src, wan_name, wan_in_use.name))
        elif src not in local:
            bad.append("entry from %s, an address no interface has any more (a WAN that went down)" % src)
    evidence = "; ".join(shown)
    if bad:
        return finding("conntrack", FAIL, "stale conntrack entry for the tunnel flow: " + "; ".join(bad),
                       evidence, "conntrack -D -p udp --orig-dst %s --orig-port-dst %d, then wgrouter apply "
                       "(wgrouter does this on failover when conntrack_flush is on)" % (address, port), **who)
    return finding("conntrack", OK, "conntrack entries of the tunnel flow match the WAN in use",
                   evidence, None, **who)


def check_allowed_ips(config, facts):
    """Overlaps between peers, and with the router's LAN/WAN subnets."""
    results = []
    owners = []  # (network, tunnel, peer label)
    for tunnel in config.tunnels:
        dev = facts.wg.get(tunnel.name)
        for peer in tunnel.peers:
            info = dev.peers.get(peer.public_key) if dev else None
            prefixes = list(info.allowed_ips) if info else list(peer.allowed_ips)
            for p in prefixes:
                net = _net(p)
                if net is not None:
                    owners.append((net, tunnel.name, peer.label))
    for i, (a, ta, pa) in enumerate(owners):
        for b, tb, pb in owners[i + 1:]:
            if a.version != b.version or not a.overlaps(b) or (ta, pa) == (tb, pb):
                continue
            same = a == b
            status = FAIL if same and ta == tb else WARN
            why = ("the same prefix on two peers of one tunnel: WireGuard gives it to one peer only"
                   if status == FAIL else "overlapping AllowedIPs: the most specific prefix wins, "
                   "traffic may go to the other peer")
            results.append(finding(
                "allowedips_overlap", status, "%s (%s peer %s) overlaps %s (%s peer %s)" % (
                    a, ta, pa, b, tb, pb), why,
                "make the AllowedIPs of the peers disjoint", tunnel=ta, peer=pa))
    tunnel_names = {t.name for t in config.tunnels} | set(facts.wg)
    for net, tname, plabel in owners:
        for local, dev, addr in _local_subnets(facts, exclude=(tname,)):
            if local.version != net.version or not local.overlaps(net):
                continue
            if net.prefixlen <= 1:
                continue  # a full tunnel: the connected routes stay more specific
            kind = "WAN" if _wan_of_device(config, dev) else ("tunnel" if dev in tunnel_names else "LAN")
            if net.subnet_of(local):
                status, why = FAIL, ("AllowedIPs %s lie inside the %s subnet %s of %s: those hosts are "
                                     "local, the peer's are unreachable" % (net, kind, local, dev))
            else:
                status, why = WARN, ("AllowedIPs %s contain the %s subnet %s of %s: the connected route "
                                     "keeps it local, check that is intended" % (net, kind, local, dev))
            results.append(finding(
                "allowedips_local", status, "%s (%s peer %s) overlaps %s subnet %s on %s" % (
                    net, tname, plabel, kind, local, dev), why + " (address %s)" % addr,
                "renumber the LAN or narrow the peer's allowed_ips", tunnel=tname, peer=plabel))
    if not results and owners:
        results.append(finding("allowedips", OK, "no AllowedIPs overlap between peers or with local subnets",
                               ", ".join(sorted({"%s: %s" % (p, n) for n, _, p in owners})), None))
    return results


def check_forwarding(config, facts):
    value = facts.sysctl.get("net.ipv4.ip_forward")
    evidence = "net.ipv4.ip_forward = %s" % value
    if value is None:
        return finding("ip_forward", WARN, "cannot read net.ipv4.ip_forward", evidence, None)
    if value != "1":
        return finding("ip_forward", FAIL, "IPv4 forwarding is off: LAN traffic never enters the tunnel",
                       evidence, "sysctl -w net.ipv4.ip_forward=1 (and find what turned it off, "
                       "e.g. /etc/sysctl.d)")
    return finding("ip_forward", OK, "IPv4 forwarding is on", evidence, None)


def check_rp_filter(config, facts):
    results = []
    all_value = facts.sysctl.get("net.ipv4.conf.all.rp_filter")
    for wan in config.wans:
        value = facts.sysctl.get("net.ipv4.conf.%s.rp_filter" % wan.device)
        if value is None:
            continue
        try:
            effective = max(int(value), int(all_value or 0))
        except ValueError:
            continue
        evidence = "net.ipv4.conf.%s.rp_filter = %s, net.ipv4.conf.all.rp_filter = %s: effective %d" % (
            wan.device, value, all_value, effective)
        if effective == RP_STRICT:
            results.append(finding(
                "rp_filter", WARN, "strict reverse path filter on %s: replies arriving on %s while the "
                "default route points at the other WAN are dropped" % (wan.name, wan.device), evidence,
                "sysctl -w net.ipv4.conf.%s.rp_filter=2 (loose) and net.ipv4.conf.all.rp_filter=2"
                % wan.device))
        else:
            results.append(finding("rp_filter", OK, "reverse path filter on %s is %s" % (
                wan.name, {0: "off", 2: "loose"}.get(effective, str(effective))), evidence, None))
    return results


def _zone_networks(section):
    value = section.options.get("network", [])
    if isinstance(value, str):
        value = value.split()
    words = []
    for v in value:
        words.extend(v.split())
    return words


def _true(value):
    return isinstance(value, str) and value in ("1", "yes", "on", "true", "enabled")


def check_firewall(config, facts):
    if facts.firewall_error:
        return [finding("firewall", WARN, "cannot read /%s" % FIREWALL, facts.firewall_error,
                        "fix the syntax error")]
    if facts.firewall is None:
        return [finding("firewall", WARN, "no /%s: firewall checks skipped" % FIREWALL, "", None)]
    zones = [s for s in facts.firewall if s.type == "zone"]
    forwardings = [s for s in facts.firewall if s.type == "forwarding"]
    results = []

    def zone_of(network):
        for z in zones:
            if network in _zone_networks(z):
                return z
        return None

    def zname(z):
        name = z.options.get("name")
        return name if isinstance(name, str) else z.ref

    for tunnel in config.tunnels:
        z = zone_of(tunnel.name)
        if z is None:
            results.append(finding(
                "firewall_zone", FAIL, "%s is in no firewall zone: forwarded traffic to and from it "
                "hits the default policy" % tunnel.name,
                "zones: %s" % "; ".join("%s: %s" % (zname(s), " ".join(_zone_networks(s))) for s in zones),
                "add 'list network %s' to a zone (e.g. a 'vpn' zone) and a forwarding lan -> vpn"
                % tunnel.name, tunnel=tunnel.name))
            continue
        name = zname(z)
        into = [f for f in forwardings if f.options.get("dest") == name]
        policy = z.options.get("forward") if isinstance(z.options.get("forward"), str) else None
        evidence = "zone %s: network %s, masq %s, forward %s; forwardings into it: %s" % (
            name, " ".join(_zone_networks(z)), z.options.get("masq", "0"), policy or "default",
            ", ".join(str(f.options.get("src")) for f in into) or "none")
        if not into:
            results.append(finding(
                "firewall_zone", WARN, "%s is in zone %s, but no zone forwards into it" % (tunnel.name, name),
                evidence, "add: config forwarding / option src 'lan' / option dest '%s'" % name,
                tunnel=tunnel.name))
        else:
            masq = _true(z.options.get("masq"))
            results.append(finding(
                "firewall_zone", OK, "%s is in zone %s (%s)" % (
                    tunnel.name, name, "masquerading: the peer sees the tunnel address" if masq
                    else "no masquerading: the peer must route the LAN subnets back"),
                evidence, None, tunnel=tunnel.name))
    for wan in config.wans:
        z = zone_of(wan.name)
        if z is None:
            results.append(finding("firewall_masq", WARN, "WAN %s is in no firewall zone" % wan.name,
                                   "", "add 'list network %s' to the wan zone" % wan.name))
            continue
        if not _true(z.options.get("masq")):
            results.append(finding(
                "firewall_masq", FAIL, "zone %s (WAN %s) does not masquerade: LAN and tunnel traffic "
                "leaves with private source addresses" % (zname(z), wan.name),
                "zone %s: masq %s" % (zname(z), z.options.get("masq", "0")),
                "set option masq '1' on zone %s" % zname(z)))
        else:
            results.append(finding("firewall_masq", OK, "zone %s masquerades traffic leaving %s" % (
                zname(z), wan.name), "zone %s: masq 1" % zname(z), None))
    return results


def check_mtu(config, facts, in_use):
    """Tunnel MTU + WireGuard overhead must fit each WAN's MTU.  ``in_use``
    is the set of WAN names some peer of the tunnel uses now."""
    results = []
    for tunnel in config.tunnels:
        link = _link(facts, tunnel.name)
        if link is None or not link.get("mtu"):
            continue
        mtu = link["mtu"]
        dev = facts.wg.get(tunnel.name)
        v6 = False
        for peer in tunnel.peers:
            info = dev.peers.get(peer.public_key) if dev else None
            endpoint = info.endpoint if info else None
            if endpoint and endpoint.startswith("["):
                v6 = True
            if any(":" in e.host for e in peer.endpoints):
                v6 = True
        overhead = OVERHEAD_V6 if v6 else OVERHEAD_V4
        wans = []
        for wan in config.wans:
            wl = _link(facts, wan.device)
            if wl is not None and wl.get("mtu"):
                wans.append((wan, wl["mtu"]))
        if not wans:
            continue
        worst = min(m for _, m in wans)
        safe = worst - overhead
        evidence = "%s mtu %d + %d B overhead (%s endpoint) = %d; %s" % (
            tunnel.name, mtu, overhead, "IPv6" if v6 else "IPv4", mtu + overhead,
            ", ".join("%s (%s) mtu %d" % (w.name, w.device, m) for w, m in wans))
        too_big = [(w, m) for w, m in wans if mtu + overhead > m]
        if not too_big:
            results.append(finding("mtu", OK, "tunnel MTU %d fits every WAN (safe up to %d)" % (mtu, safe),
                                   evidence, None, tunnel=tunnel.name))
            continue
        status = FAIL if any(w.name in in_use for w, _ in too_big) else WARN
        note = " (below %d: no IPv6 inside the tunnel)" % IPV6_MIN_MTU if safe < IPV6_MIN_MTU else ""
        results.append(finding(
            "mtu", status, "tunnel MTU %d is too big for %s: packets over %d B are fragmented or "
            "dropped%s" % (mtu, ", ".join("%s (mtu %d)" % (w.name, m) for w, m in too_big),
                           min(m for _, m in too_big) - overhead,
                           "" if status == FAIL else " after a failover to it"),
            evidence, "set option mtu '%d' on interface %s in /etc/config/network (the worst WAN's MTU "
            "minus %d)%s" % (safe, tunnel.name, overhead, note), tunnel=tunnel.name))
    return results


def evaluate(config, facts, now):
    """The findings, pure: ``config`` (model.Config), ``facts`` (Facts)."""
    results = []
    if facts.wg_error:
        results.append(finding("wireguard", FAIL, "cannot read WireGuard state", facts.wg_error,
                               "install wireguard-tools and run as root"))
    for wan in config.wans:
        state = facts.wans.get(wan.name)
        results.append(finding("wan", OK if state is not None and state.up else WARN,
                               "WAN %s (%s) is %s" % (wan.name, wan.device,
                                                      "up" if state is not None and state.up else "down"),
                               _wan_text(state), None if state is not None and state.up else
                               "ifup %s, or check its link and default route" % wan.name))
    used = set()
    for tunnel in config.tunnels:
        dev = facts.wg.get(tunnel.name)
        if dev is None:
            if not facts.wg_error:
                results.append(finding(
                    "tunnel", FAIL, "tunnel %s does not exist" % tunnel.name,
                    "no WireGuard device %s" % tunnel.name, "ifup %s and check logread for netifd errors"
                    % tunnel.name, tunnel=tunnel.name))
            continue
        for peer in tunnel.peers:
            info = dev.peers.get(peer.public_key)
            if info is None:
                results.append(finding(
                    "peer", FAIL, "peer %s is configured but not on %s" % (peer.label, tunnel.name),
                    "wg show %s: no peer %s" % (tunnel.name, peer.public_key),
                    "ifup %s (netifd re-applies its peers)" % tunnel.name, tunnel=tunnel.name,
                    peer=peer.label))
                continue
            wan, route_findings = check_route(config, peer, info, facts)
            if wan is not None:
                used.add(wan.name)
            results.append(check_handshake(config, peer, info, now))
            results.append(check_endpoint_dns(peer, info, facts))
            results.extend(route_findings)
            ct = check_conntrack(config, peer, info, facts, wan)
            if ct is not None:
                results.append(ct)
            results.extend(check_keepalive(config, peer, info, wan, facts))
    results.extend(check_allowed_ips(config, facts))
    results.append(check_forwarding(config, facts))
    results.extend(check_rp_filter(config, facts))
    results.extend(check_firewall(config, facts))
    results.extend(check_mtu(config, facts, used))
    return results


def worst(findings):
    status = OK
    for f in findings:
        if _RANK[f["status"]] > _RANK[status]:
            status = f["status"]
    return status


def report(findings):
    return {"findings": findings, "worst": worst(findings)}


# ------------------------------------------------------------------ entry points


def run(root, config=None, runner=None, now=None):
    """The diagnosis as the ubus reply dict.  Loads the config when None."""
    from wgrouter import runner as runner_mod
    if config is None:
        from wgrouter import config as config_mod
        try:
            config = config_mod.load(root)
        except wgrouter.Error as e:
            return report([finding("config", FAIL, "the configuration does not load", str(e),
                                   "wgrouter check-config, then fix what it names")])
    runner = runner or runner_mod.Runner()
    try:
        facts = gather(root, config, runner)
    except (OSError, wgrouter.Error) as e:
        return report([finding("diagnose", FAIL, "cannot read the system state", str(e),
                               "run as root on the router")])
    return report(evaluate(config, facts, time.time() if now is None else now))


def format_text(result):
    lines = []
    for f in result["findings"]:
        where = f["tunnel"] or ""
        if f["peer"]:
            where += " peer %s" % f["peer"]
        line = "[%s]%s %s%s: %s" % (f["status"], " " * (4 - len(f["status"])), f["check"],
                                    " (%s)" % where if where else "", f["summary"])
        if f["fix"]:
            line += " -- fix: %s" % f["fix"]
        lines.append(line)
        if f["evidence"] and f["status"] != OK:
            lines.append("       evidence: %s" % f["evidence"])
    counts = {s: sum(1 for f in result["findings"] if f["status"] == s) for s in (OK, WARN, FAIL)}
    lines.append("%d ok, %d warn, %d fail: %s" % (counts[OK], counts[WARN], counts[FAIL],
                                                 result["worst"]))
    return "\n".join(lines)


def main(root, as_json=False):
    result = run(root)
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_text(result))
    return EXIT_CODES[result["worst"]]
