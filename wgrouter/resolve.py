"""Resolve an endpoint name through one WAN.

The daemon resolves in its own loop: ``start_query`` sends a non-blocking A
query for a ``model.Resolve`` action from a socket bound to the WAN device,
so the query leaves through that WAN even while the other one holds the
default route, and turns the answer into an event (model.Resolved).

``python3 -m wgrouter.resolve --device DEV --server IP HOST`` (what
``wgrouter diagnose`` runs, with a hard timeout) asks each server in turn
and prints one JSON line, {"addresses": [...], "ttl": N} or {"error":
"..."}, and exits 0 or 1.
"""

import json
import os
import sys
import time

import wgrouter
from wgrouter import model
from wgrouter import runner


class ResolveFailed(wgrouter.Error):
    """name resolution failed"""


class NoRecord(ResolveFailed):
    """the name exists but has no record of the type asked"""


# One server gets this long before the next is asked; a WAN whose resolver
# is silent for 2 s is not one to trust for the endpoint either.
SERVER_TIMEOUT = 2.0
RESOLV_CONF = "/etc/resolv.conf"
# netifd writes the DNS servers of every interface that is up (learned by
# DHCP, PPP or RA, or set with option dns) into this file, each group under
# a "# Interface NAME" line; before OpenWrt 19.07 it was /tmp/resolv.conf.auto.
NETIFD_RESOLV = ("tmp/resolv.conf.d/resolv.conf.auto", "tmp/resolv.conf.auto")


# ------------------------------------------------------------------ child


def nameservers(path=RESOLV_CONF):
    servers = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append(fields[1].split("%", 1)[0])
    except OSError:
        pass
    return servers


def wan_nameservers(wan, root="/"):
    """The DNS servers netifd has for interface ``wan`` (may be empty).

    These are the uplink's own resolvers, which often answer only queries
    from that uplink's addresses: asked through the WAN's device, they work
    where the other WAN's would not.  Link-local servers ("fe80::1%wan") are
    left out: a query bound to the WAN device reaches global ones only.
    """
    for path in NETIFD_RESOLV:
        try:
            with open(os.path.join(root, path)) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        servers = []
        current = None
        for line in lines:
            fields = line.split()
            if fields[:2] == ["#", "Interface"] and len(fields) == 3:
                current = fields[2]
            elif current == wan and len(fields) >= 2 and fields[0] == "nameserver" \
                    and "%" not in fields[1]:
                servers.append(fields[1])
        return servers
    return []


def servers_for(wan, configured, root="/"):
    """The servers to ask through ``wan``: its option dns_server, else the
    ones netifd learned on it; empty when neither (the system resolver)."""
    return tuple(configured) or tuple(wan_nameservers(wan, root))


def _is_loopback(server):
    return server.startswith("127.") or server == "::1"


def _socket(server, device, kind):
    import socket

    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, kind)
    # A resolver on loopback picks its own uplink; binding the query to a WAN
    # device would only make it unreachable.
    if device and not _is_loopback(server):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode() + b"\0")
    return sock


# Names are re-resolved only with dnspython, which is optional (OpenWrt's
# python3-dns needs the whole python3): without it a name keeps the address
# netifd resolved when it brought the tunnel up.
NO_DNSPYTHON = ("python3-dns is not installed (opkg install wgrouter-dns), so endpoint "
                "names are not re-resolved")


def available():
    """True if dnspython can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("dns") is not None
    except (ImportError, ValueError):
        return False


def _query(host, server, port, device, timeout, rdtype="A"):
    import socket

    import dns.flags
    import dns.message
    import dns.query

    query = dns.message.make_query(host, rdtype)
    sock = _socket(server, device, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        response = dns.query.udp(query, server, timeout=timeout, port=port, sock=sock)
    finally:
        sock.close()
    if response.flags & dns.flags.TC:
        sock = _socket(server, device, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((server, port))
            response = dns.query.tcp(query, server, timeout=timeout, port=port, sock=sock)
        finally:
            sock.close()
    return query, response


def answer(query, response):
    """(addresses, ttl) from a response to an A or AAAA query, following
    CNAMEs; ttl is the smallest TTL of the RRsets used.  Raises
    ResolveFailed (NoRecord: the name has no record of that type)."""
    import dns.rcode
    import dns.rdatatype

    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        raise ResolveFailed(dns.rcode.to_text(rcode))
    rdtype = query.question[0].rdtype
    rdclass = query.question[0].rdclass
    name = query.question[0].name
    ttls = []
    seen = set()
    while name not in seen:
        seen.add(name)
        found = None
        for rrset in response.answer:
            # records of another class (CH, or a number dnspython keeps as
            # generic data) are no address, whatever their type says
            if rrset.name != name or rrset.rdclass != rdclass:
                continue
            if rrset.rdtype == rdtype:
                addresses = [rdata.address for rdata in rrset]
                ttls.append(rrset.ttl)
                return addresses, min(ttls)
            if rrset.rdtype == dns.rdatatype.CNAME:
                found = rrset
        if found is None:
            break
        ttls.append(found.ttl)
        name = found[0].target
    raise NoRecord("no %s record for %s" % (dns.rdatatype.to_text(rdtype),
                                           query.question[0].name.to_text(omit_final_dot=True)))


def resolve(host, servers, device=None, port=53, timeout=SERVER_TIMEOUT):
    """Ask each server in turn; the first definite answer wins (NXDOMAIN
    included: another server of the same zone would say the same).  A name
    without an A record is asked again for AAAA (IPv4 first, as the daemon)."""
    try:
        return _resolve(host, servers, device, port, timeout, "A")
    except NoRecord:
        return _resolve(host, servers, device, port, timeout, "AAAA")


def _resolve(host, servers, device, port, timeout, rdtype):
    import dns.exception

    errors = []
    for server in servers:
        try:
            query, response = _query(host, server, port, device, timeout, rdtype)
        except dns.exception.Timeout:
            errors.append("%s: timeout" % server)
            continue
        except (OSError, dns.exception.DNSException) as e:
            errors.append("%s: %s" % (server, e))
            continue
        try:
            return answer(query, response)
        except ResolveFailed as e:
            if str(e) in ("SERVFAIL", "REFUSED"):
                errors.append("%s: %s" % (server, e))
                continue
            raise
    raise ResolveFailed("; ".join(errors) or "no name servers")


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="wgrouter.resolve", description="Resolve a name through one WAN's DNS servers; "
                                     "print one JSON line.")
    parser.add_argument("--device", help="WAN device the queries go out of")
    parser.add_argument("--server", action="append", default=[], help="name server (repeatable)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--timeout", type=float, default=SERVER_TIMEOUT, help="seconds per server")
    parser.add_argument("--resolv-conf", default=RESOLV_CONF)
    parser.add_argument("host")
    args = parser.parse_args(argv)
    servers = args.server
    device = args.device
    if not servers:
        servers = nameservers(args.resolv_conf)
        device = None
    try:
        addresses, ttl = resolve(args.host, servers, device, args.port, args.timeout)
    except ResolveFailed as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    except ImportError as e:
        print(json.dumps({"error": "%s (%s)" % (NO_DNSPYTHON, e)}), flush=True)
        return 1
    print(json.dumps({"addresses": addresses, "ttl": ttl}), flush=True)
    return 0


# ------------------------------------------------------------- in process


class Query(runner.Watched):
    """A non-blocking A query, answered in the daemon's own selectors loop.

    A name that has no A record is asked again for AAAA: IPv4 first, since
    most uplinks carry it, and IPv6 endpoints still work by name.

    The resident daemon imports dnspython's message code (not its resolver,
    which pulls in ssl) the first time an endpoint name has to be resolved:
    starting a child costs ~0.1 CPU s per lookup, which TTL-honouring
    refreshes would turn into most of the idle budget.  The query goes to
    every server at once from one socket bound to the WAN device; the first
    definite answer wins.  The shell watches, times out and reaps it as it
    does a child process (runner.Watched).
    """

    def __init__(self, action, deadline, finish, on_timeout, port=53):
        import socket

        import dns.message
        import dns.rdatatype

        super().__init__(deadline, finish, on_timeout, name="resolve %s" % action.host)
        self.query = dns.message.make_query(action.host, dns.rdatatype.A)
        self.port = port
        self.reply = None
        self.errors = []
        self.servers = list(action.servers)
        device = action.device
        if not self.servers:
            self.servers = nameservers()
            device = None
        if not self.servers:
            raise ResolveFailed("no name servers")
        v6 = ":" in self.servers[0]
        self.sock = _socket(self.servers[0], None if v6 else device, socket.SOCK_DGRAM)
        if any(_is_loopback(srv) for srv in self.servers) and device:
            # a local resolver picks its own uplink: do not bind to the WAN
            self.sock.close()
            self.sock = _socket(self.servers[0], None, socket.SOCK_DGRAM)
        self.fileobj = self.sock
        self.sock.setblocking(False)
        self.v6 = v6
        self.pending = self._send()
        if not self.pending:
            self.sock.close()
            raise ResolveFailed("; ".join(self.errors) or "no name servers")

    def _send(self):
        wire = self.query.to_wire()
        sent = 0
        for server in self.servers:
            if (":" in server) != self.v6:
                continue
            try:
                self.sock.sendto(wire, (server, self.port))
                sent += 1
            except OSError as e:
                self.errors.append("%s: %s" % (server, e))
        return sent

    def _ask_aaaa(self):
        """The name has no A record: ask the same servers for AAAA."""
        import dns.message
        import dns.rdatatype

        self.query = dns.message.make_query(self.query.question[0].name, dns.rdatatype.AAAA)
        self.pending = self._send()
        return self.pending > 0

    def read(self):
        """Take one datagram; False once there is a definite outcome."""
        import dns.exception
        import dns.message

        try:
            data, peer = self.sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            self.errors.append(str(e))
            self.pending -= 1
            return self.pending > 0
        try:
            try:
                response = dns.message.from_wire(data)
                if not self.query.is_response(response):
                    return True  # not ours: keep waiting
                addresses, ttl = answer(self.query, response)
            except (ResolveFailed, dns.exception.DNSException):
                raise
            except Exception as e:
                # dnspython parsing hostile bytes may fail in ways it does not
                # wrap; that is a malformed answer, never a failed loop
                raise dns.exception.FormError("malformed answer: %r" % (e,)) from None
        except NoRecord as e:
            import dns.rdatatype

            if self.query.question[0].rdtype == dns.rdatatype.A and self._ask_aaaa():
                return True
            self.errors.append("%s: %s" % (peer[0], e))
            self.reply = {"error": "; ".join(self.errors)}
            return False
        except ResolveFailed as e:
            self.errors.append("%s: %s" % (peer[0], e))
            if str(e) in ("SERVFAIL", "REFUSED"):
                self.pending -= 1
                return self.pending > 0
            self.reply = {"error": "; ".join(self.errors)}
            return False
        except dns.exception.DNSException as e:
            self.errors.append("%s: %s" % (peer[0], e))
            self.pending -= 1
            return self.pending > 0
        self.reply = {"addresses": addresses, "ttl": ttl}
        return False

    def reap(self, kill=False):
        self.sock.close()
        reply = self.reply or {"error": "; ".join(self.errors) or "no answer"}
        return (0 if "addresses" in reply else 1), json.dumps(reply), ""


def start_query(action, port=None, timeout=SERVER_TIMEOUT, now=None):
    """Start a Query for a model.Resolve action; its finish() yields
    model.Resolved or model.ResolveFailed."""
    start = time.monotonic() if now is None else now
    finish, on_timeout = _outcome(action, timeout)
    try:
        return Query(action, start + timeout, finish, on_timeout, port=port or 53)
    except (OSError, ResolveFailed) as e:
        raise ResolveFailed(str(e))


def read_reply(out):
    """(last line, its JSON or None) of what a resolver child printed."""
    line = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        return line, json.loads(line)
    except ValueError:
        return line, None


def _outcome(action, limit):
    """finish() and on_timeout() turning a resolver's JSON line into events."""

    def failed(error):
        return [model.ResolveFailed(host=action.host, wan=action.wan, error=error)]

    def finish(rc, out, err):
        line, reply = read_reply(out)
        if not isinstance(reply, dict):
            return failed("resolver exited %d: %s" % (rc, (err.strip() or out.strip())[-200:]))
        addresses, ttl = reply.get("addresses"), reply.get("ttl", 0)
        if rc == 0 and isinstance(addresses, list) and addresses:
            if not all(isinstance(a, str) and model.is_ip(a) for a in addresses) \
                    or type(ttl) is not int or ttl < 0:
                return failed("malformed resolver reply: %s" % line[:200])
            return [model.Resolved(host=action.host, wan=action.wan, addresses=list(addresses), ttl=ttl)]
        return failed(str(reply.get("error") or "resolver exited %d" % rc))

    def on_timeout():
        return failed("resolver timed out after %gs" % limit)

    return finish, on_timeout


if __name__ == "__main__":
    sys.exit(main())
