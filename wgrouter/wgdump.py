"""Parse the tab-separated output of `wg show all dump` and `wg show IF dump`.

Interface lines carry the private key, public key, listen port and fwmark;
peer lines carry public key, preshared key, endpoint, allowed ips, latest
handshake, rx, tx and persistent keepalive.  `wg show all dump` prefixes
every line with the interface name.  This is the fallback where no
in-process transport (``wgrouter.wg``) answers, and what `diagnose` reads.
"""

import dataclasses

import wgrouter
from wgrouter import wg


class BadDump(wgrouter.Error):
    """unexpected line in wg dump output"""


def parse(text, interface=None):
    """Return {tunnel: {public_key: PeerStats}}.

    With ``interface`` the text is the output of `wg show INTERFACE dump`
    (no name column).  Every interface appears, even one without peers.
    """
    return {name: {key: peer.stats() for key, peer in peers.items()}
            for name, peers in parse_peers(text, interface).items()}


@dataclasses.dataclass
class Device:
    """One interface of the dump: its listen port, fwmark and peers."""
    listen_port: int = 0
    fwmark: int = 0
    peers: dict = dataclasses.field(default_factory=dict)  # public key -> wg.PeerInfo


def parse_peers(text, interface=None):
    """Return {tunnel: {public_key: wg.PeerInfo}}: ``parse`` with the allowed IPs."""
    return {name: dev.peers for name, dev in parse_devices(text, interface).items()}


def _number(text, base=10):
    try:
        return int(text, base)
    except ValueError:
        return 0


def parse_devices(text, interface=None):
    """Return {tunnel: Device}: every line of the dump."""
    result = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if interface is not None:
            fields.insert(0, interface)
        name = fields[0]
        if len(fields) == 5:  # interface line: private key, public key, port, fwmark
            dev = result.setdefault(name, Device())
            dev.listen_port = _number(fields[3])
            dev.fwmark = 0 if fields[4] == "off" else _number(fields[4], 0)  # "0xca6c"
            continue
        if len(fields) != 9:
            # never quote the line: dump lines carry private and preshared keys
            raise BadDump("unexpected line %d in wg dump output (%d fields)" % (lineno, len(fields)))
        peers = result.setdefault(name, Device()).peers
        try:
            peers[fields[1]] = wg.PeerInfo(
                public_key=fields[1],
                endpoint=None if fields[3] == "(none)" else fields[3],
                latest_handshake=int(fields[5]),
                rx=int(fields[6]),
                tx=int(fields[7]),
                keepalive=0 if fields[8] == "off" else int(fields[8]),
                allowed_ips=() if fields[4] in ("(none)", "") else tuple(fields[4].split(",")),
            )
        except ValueError:
            raise BadDump("unexpected line %d in wg dump output (a number field is not a number)"
                          % lineno) from None
    return result
