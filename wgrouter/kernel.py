"""What the kernel says about the WANs and the tunnels, from netlink dumps.

``wan_states`` is the pure part (dumps in, ``WanState`` out); ``observe_wans``
feeds it fresh dumps.  The daemon calls this only when the netlink monitor
saw a change.
"""

import socket

from wgrouter import model
from wgrouter import netlink

RT_MAIN = netlink.RT_TABLE_MAIN


def link_up(link) -> bool:
    """Up with carrier: operstate UP, or UNKNOWN with IFF_LOWER_UP (drivers
    such as tun/ppp that never report an operstate)."""
    if not link["up"]:
        return False
    if link["operstate"] == "UP":
        return True
    return link["operstate"] == "UNKNOWN" and link["lower_up"]


def _default_route(routes, ifindex, table, family=socket.AF_INET):
    best = None
    for route in routes:
        if route["family"] != family or route["dst_len"] != 0 or route["type"] != "unicast":
            continue
        if route["table"] != table:
            continue
        if route["oif"] == ifindex:
            gateway = route["gateway"]
        else:
            hops = [h for h in route["nexthops"] if h["oif"] == ifindex]
            if not hops:
                continue
            gateway = hops[0]["gateway"]
        if best is None or route["metric"] < best[0]:
            best = (route["metric"], gateway)
    return best


# IPv6 addresses that cannot carry a tunnel to the Internet: not yet
# confirmed by duplicate address detection, or refused by it.
_UNUSABLE6 = netlink.IFA_F_TENTATIVE | netlink.IFA_F_DADFAILED
RT_SCOPE_UNIVERSE = 0


def _address(addrs, ifindex, family):
    for a in addrs:
        if a["ifindex"] != ifindex or a["family"] != family or not a["address"]:
            continue
        if family == socket.AF_INET6 and (a["scope"] != RT_SCOPE_UNIVERSE
                                          or a.get("flags", 0) & _UNUSABLE6):
            continue  # link-local, or not usable yet
        return a["address"]
    return None


def _route(routes, ifindex, wan, family):
    tables = [wan.table] if wan.table is not None else []
    if RT_MAIN not in tables:
        tables.append(RT_MAIN)
    for table in tables:
        route = _default_route(routes, ifindex, table, family)
        if route is not None:
            return route
    return None


def wan_states(wans, links, addrs, routes, mwan3=False):
    """{wan name: WanState} from netlink dumps.

    A WAN carries IPv4 when its device exists, is up with carrier, has an
    IPv4 address and a default route through it: in the WAN's own table when
    one is set (mwan3), else, or when that table has none, in the main table.
    It carries IPv6 likewise, with a global IPv6 address that passed duplicate
    address detection and an IPv6 default route.  It is up when it carries
    either.
    """
    by_name = {link["ifname"]: link for link in links}
    states = {}
    for wan in wans:
        link = by_name.get(wan.device)
        if link is None:
            states[wan.name] = model.WanState(wan.name, wan.device, False)
            continue
        index = link["ifindex"]
        carrier = link_up(link)
        address = _address(addrs, index, socket.AF_INET)
        route = _route(routes, index, wan, socket.AF_INET)
        address6 = _address(addrs, index, socket.AF_INET6)
        route6 = _route(routes, index, wan, socket.AF_INET6) if address6 else None
        up4 = carrier and address is not None and route is not None
        up6 = carrier and address6 is not None and route6 is not None
        states[wan.name] = model.WanState(
            wan.name, wan.device, up4 or up6,
            gateway=route[1] if route is not None else None, address=address,
            up6=up6, gateway6=route6[1] if route6 is not None else None,
            address6=address6 if up6 else None,
            up4=None if up4 == (up4 or up6) else up4)  # only said when it differs
    return states


def dumps():
    """(links, addrs, routes): a fresh netlink dump of each."""
    return netlink.dump_links(), netlink.dump_addrs(), netlink.dump_routes()


def observe_wans(wans, mwan3=False):
    """{wan name: WanState} for ``wans`` (tuple of model.Wan), from fresh dumps.

    ``mwan3`` changes nothing by itself: the WAN's ``table`` says where its
    default route lives."""
    return wan_states(wans, *dumps(), mwan3=mwan3)
