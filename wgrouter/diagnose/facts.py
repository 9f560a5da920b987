"""What `wgrouter diagnose` reads from the system, into a ``Facts``.

``gather`` takes the netlink dumps (``kernel``), each WireGuard device the
way the daemon reads it (``wg.Client``: UAPI or generic netlink, `wg show all
dump` through ``wgdump.fallback`` for a device neither answers for),
`ip route get` for each endpoint, `conntrack -L` for
its flow, the sysctls under /proc/sys, DNS through each WAN (the resolver
child of ``resolve``) and <root>/etc/config/firewall (``uci``).  It only
reads: no route, rule, wg, conntrack or sysctl change.
"""

import dataclasses
import os
import sys
import typing

import wgrouter
from wgrouter import kernel
from wgrouter import model
from wgrouter import resolve
from wgrouter import runner as runner_mod
from wgrouter import uci
from wgrouter import wg as wg_mod
from wgrouter import wgdump

# Seconds one resolver child may take per server (UDP then TCP) plus start-up.
RESOLVE_SERVER_TIMEOUT = 2.0
RESOLVE_OVERHEAD = 3.0
FIREWALL = "etc/config/firewall"
# Key of the DNS answer asked through /etc/resolv.conf (WANs with neither
# dns_server nor servers learned by netifd).
SYSTEM_RESOLVER = "(system)"
# Link kinds a WireGuard device has: the kernel's own, and the tun device a
# userspace implementation opens (torvalds/linux drivers/net/tun.c: kind "tun").
WG_KINDS = ("wireguard", "tun")
# How a device was read when no in-process transport answered for it.
VIA_WG = "wg"


@dataclasses.dataclass
class Facts:
    """What ``gather`` saw; every field has a harmless default so tests
    build only what a check needs."""

    links: list = dataclasses.field(default_factory=list)  # netlink.dump_links()
    addrs: list = dataclasses.field(default_factory=list)  # netlink.dump_addrs()
    wans: dict = dataclasses.field(default_factory=dict)  # name -> model.WanState
    wg: dict = dataclasses.field(default_factory=dict)  # device -> wg.Device
    wg_via: dict = dataclasses.field(default_factory=dict)  # device -> "uapi", "genetlink" or VIA_WG
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

    def peer(self, peer):
        """The wg.PeerInfo of the configured ``peer`` (model.Peer), or None."""
        dev = self.wg.get(peer.tunnel)
        return dev.peer(peer.public_key) if dev else None


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


def _resolve(runner, host, wan=None, python=None, servers=None):
    """Ask DNS for ``host`` with the resolver child: through ``wan`` (its
    ``servers``, by default its dns_servers, bound to its device), or the
    system resolver when None."""
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
    _line, reply = resolve.read_reply(result.out)
    via = "%s (%s)" % (wan.name, ", ".join(servers)) if servers else "the system resolver"
    if isinstance(reply, dict) and isinstance(reply.get("addresses"), list):
        return {"addresses": [str(a) for a in reply["addresses"]], "via": via}
    error = reply.get("error") if isinstance(reply, dict) else None
    return {"error": error or (result.err.strip() or "resolver exited %d" % result.rc)[-200:],
            "via": via}


def read_wireguard(facts, config, runner, client):
    """``facts.wg``, ``wg_via`` and ``wg_error`` by the daemon's rule
    (shell.Shell._read_peers), for links of this namespace only:
    wireguard-go's UAPI sockets are shared by every namespace."""
    present = {link["ifname"] for link in facts.links}
    names = {link["ifname"] for link in facts.links if link.get("kind") in WG_KINDS}
    names |= {t.name for t in config.tunnels} & present
    facts.wg, failed = client.read_devices(sorted(names))
    facts.wg_via = {name: client.used[name] for name in facts.wg}
    if failed:
        dumped, why = wgdump.fallback(runner, failed, in_process=bool(client.transports))
        if dumped is None:
            facts.wg_error = why
        else:
            facts.wg.update(dumped)
            facts.wg_via.update(dict.fromkeys(dumped, VIA_WG))


def gather(root, config, runner, dumps=None, sysctls=None, wg=None):
    """Read everything ``evaluate`` needs.  ``dumps()`` -> (links, addrs,
    routes), ``sysctls(names)`` -> {name: value} and ``wg`` (a wg.Client)
    default to netlink, /proc/sys and the WireGuard transports of the
    namespace we run in."""
    facts = Facts()
    links, addrs, routes = (dumps or kernel.dumps)()
    facts.links, facts.addrs, facts.kernel_routes = links, addrs, routes
    facts.wans = kernel.wan_states(config.wans, links, addrs, routes, mwan3=config.settings.mwan3)
    client = wg or wg_mod.Client()
    try:
        read_wireguard(facts, config, runner, client)
    finally:
        if wg is None:
            client.close()

    endpoints = set()
    for peer in config.peers():
        info = facts.peer(peer)
        if info and info.endpoint:
            try:
                endpoints.add(model.split_endpoint(info.endpoint) + (facts.wg[peer.tunnel].fwmark,))
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


