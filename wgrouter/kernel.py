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


def _default_route(routes, ifindex, table):
    best = None
    for route in routes:
        if route["family"] != socket.AF_INET or route["dst_len"] != 0 or route["type"] != "unicast":
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


def wan_states(wans, links, addrs, routes, mwan3=False):
    """{wan name: WanState} from netlink dumps.

    A WAN is up when its device exists, is up with carrier, has an IPv4
    address and a default route through it: in the WAN's own table when one
    is set (mwan3), else, or when that table has none, in the main table.
    """
    by_name = {link["ifname"]: link for link in links}
    states = {}
    for wan in wans:
        link = by_name.get(wan.device)
        if link is None:
            states[wan.name] = model.WanState(wan.name, wan.device, False)
            continue
        index = link["ifindex"]
        address = next(
            (a["address"] for a in addrs if a["ifindex"] == index and a["family"] == socket.AF_INET),
            None,
        )
        tables = [wan.table] if wan.table is not None else []
        if RT_MAIN not in tables:
            tables.append(RT_MAIN)
        route = None
        for table in tables:
            route = _default_route(routes, index, table)
            if route is not None:
                break
        up = link_up(link) and address is not None and route is not None
        gateway = route[1] if route is not None else None
        states[wan.name] = model.WanState(wan.name, wan.device, up, gateway=gateway, address=address)
    return states


def observe_wans(wans, mwan3=False):
    """{wan name: WanState} for ``wans`` (tuple of model.Wan), from fresh dumps.

    ``mwan3`` changes nothing by itself: the WAN's ``table`` says where its
    default route lives."""
    return wan_states(
        wans,
        netlink.dump_links(),
        netlink.dump_addrs(socket.AF_INET),
        netlink.dump_routes(family=socket.AF_INET),
        mwan3=mwan3,
    )


def tunnels_present(names) -> frozenset:
    """The subset of ``names`` that exist as network devices."""
    present = {link["ifname"] for link in netlink.dump_links()}
    return frozenset(name for name in names if name in present)
