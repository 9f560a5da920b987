"""Parse the tab-separated output of `wg show all dump` and `wg show IF dump`.

Interface lines carry the private key, public key, listen port and fwmark;
peer lines carry public key, preshared key, endpoint, allowed ips, latest
handshake, rx, tx and persistent keepalive.  `wg show all dump` prefixes
every line with the interface name.  This is the fallback where no
in-process transport (``wgrouter.wg``) answers: ``fallback`` forks it for
the daemon and for `diagnose` alike.
"""

import wgrouter
from wgrouter import runner as runner_mod
from wgrouter import wg


class BadDump(wgrouter.Error):
    """unexpected line in wg dump output"""


def _number(text, base=10):
    try:
        return int(text, base)
    except ValueError:
        return 0


def parse_devices(text, interface=None):
    """Return {tunnel: wg.Device}: every line of the dump."""
    result = {}  # tunnel -> [listen port, fwmark, {public key: wg.PeerInfo}]
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if interface is not None:
            fields.insert(0, interface)
        name = fields[0]
        if len(fields) == 5:  # interface line: private key, public key, port, fwmark
            dev = result.setdefault(name, [0, 0, {}])
            dev[0] = _number(fields[3])
            dev[1] = 0 if fields[4] == "off" else _number(fields[4], 0)  # "0xca6c"
            continue
        if len(fields) != 9:
            # never quote the line: dump lines carry private and preshared keys
            raise BadDump("unexpected line %d in wg dump output (%d fields)" % (lineno, len(fields)))
        peers = result.setdefault(name, [0, 0, {}])[2]
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
    return {name: wg.Device(port, fwmark, list(peers.values()))
            for name, (port, fwmark, peers) in result.items()}


def fallback(runner, failed, in_process=True):
    """Fork `wg show all dump` for the devices ``failed`` ({device: why},
    the second half of wg.Client.read): ({device: wg.Device} of those it
    lists, "") or (None, why not), the in-process reasons added when
    ``in_process`` (there were transports to ask)."""
    try:
        result = runner.run(["wg", "show", "all", "dump"])
    except (runner_mod.CommandMissing, OSError) as e:  # OSError: fork failed (ENOMEM)
        why = "wg show all dump: %s" % e
    else:
        if result.rc != 0:
            why = result.err.strip() or "wg exited %d" % result.rc
        else:
            try:
                devices = parse_devices(result.out)
            except BadDump as e:
                why = str(e)
            else:
                return {name: devices[name] for name in failed if name in devices}, ""
    if in_process:
        why += " (in process: %s)" % "; ".join(failed[t] for t in sorted(failed))
    return None, why
