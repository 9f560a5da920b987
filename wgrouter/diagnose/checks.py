"""The checks of `wgrouter diagnose`, pure: config, ``facts.Facts`` and
``now`` in, findings out.

A finding is a dict {"check", "status" ("ok"|"warn"|"fail"), "tunnel",
"peer", "summary", "evidence", "fix"}; ``evaluate`` runs every check.
"""

import ipaddress
import socket

from wgrouter import apply
from wgrouter import kernel
from wgrouter import model
from wgrouter.diagnose import facts as facts_mod

OK = "ok"
WARN = "warn"
FAIL = "fail"

# Outer headers WireGuard adds to every inner packet: IP (20 or 40) + UDP 8
# + WireGuard data header 16 + Poly1305 tag 16.
OVERHEAD_V4 = 60
OVERHEAD_V6 = 80
# The smallest MTU an IPv6 inner packet may see (RFC 8200); a tunnel below it
# cannot carry IPv6 at all.
IPV6_MIN_MTU = 1280
# Common NAT UDP mapping timeouts are 30-120 s; a keepalive above 25 s may
# let the mapping expire between two keepalives.
NAT_SAFE_KEEPALIVE = 25
# Address ranges behind which a NAT is likely: RFC 1918 and CGNAT (RFC 6598).
NAT_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
# rp_filter values: 0 off, 1 strict, 2 loose; the kernel uses max(all, dev).
RP_STRICT = 1


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


def _mtu(facts, name):
    for link in facts.links:
        if link["ifname"] == name:
            return link.get("mtu")
    return None


def _names(facts):
    """{ifindex: device name} of the links dump."""
    return {link["ifindex"]: link["ifname"] for link in facts.links}


def _local_subnets(facts, exclude=()):
    """[(network, device, address)] of the router's own addresses."""
    names = _names(facts)
    out = []
    for a in facts.addrs:
        dev = names.get(a["ifindex"])
        if dev is None or dev in exclude or dev == "lo" or a.get("address") is None:
            continue
        if a.get("scope", 0) != kernel.RT_SCOPE_UNIVERSE:  # not link or host scope
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
    if number == apply.ROUTE_PROTO:
        return "%d (%s)" % (number, apply.ROUTE_PROTO_NAME)
    return _PROTO_NAMES.get(number, str(number))


def _route_text(facts, route):
    dev = _names(facts).get(route["oif"]) if route.get("oif") else None
    words = ["%s/%d" % (route["dst"], route["dst_len"])]
    if route.get("gateway"):
        words += ["via", route["gateway"]]
    if dev:
        words += ["dev", dev]
    if route.get("table") not in (None, kernel.RT_MAIN):
        words += ["table", str(route["table"])]
    words += ["proto", _proto_name(route["protocol"]), "metric", str(route.get("metric", 0))]
    return " ".join(words)


def check_host_routes(peer, address, facts):
    """Whose host routes pin the endpoint: wgrouter's carry its own route
    protocol, netifd's are proto static (its host dependency, left in place
    by nohostroute 0); anything else was added by someone else."""
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
    local = {a["address"] for a in facts.addrs if a.get("address")}
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
    for peer in config.peers():
        info = facts.peer(peer)
        prefixes = list(info.allowed_ips) if info else list(peer.allowed_ips)
        for p in prefixes:
            net = _net(p)
            if net is not None:
                owners.append((net, peer.tunnel, peer.label))
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
        return [finding("firewall", WARN, "cannot read /%s" % facts_mod.FIREWALL, facts.firewall_error,
                        "fix the syntax error")]
    if facts.firewall is None:
        return [finding("firewall", WARN, "no /%s: firewall checks skipped" % facts_mod.FIREWALL, "", None)]
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
        mtu = _mtu(facts, tunnel.name)
        if not mtu:
            continue
        v6 = False
        for peer in tunnel.peers:
            info = facts.peer(peer)
            endpoint = info.endpoint if info else None
            if endpoint and endpoint.startswith("["):
                v6 = True
            if any(":" in e.host for e in peer.endpoints):
                v6 = True
        overhead = OVERHEAD_V6 if v6 else OVERHEAD_V4
        wans = []
        for wan in config.wans:
            wan_mtu = _mtu(facts, wan.device)
            if wan_mtu:
                wans.append((wan, wan_mtu))
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
    if facts.wg_via:
        results.append(finding("wireguard", OK, "WireGuard read: " + ", ".join(
            "%s through %s" % item for item in sorted(facts.wg_via.items()))))
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
            info = dev.peer(peer.public_key)
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
