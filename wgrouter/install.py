"""What the package's install finds and changes: ``wgrouter setup``.

OpenWrt runs /etc/uci-defaults/99-wgrouter once, at install or at first
boot, and that runs ``wgrouter setup``:

* While /etc/config/wgrouter is still the shipped example (or a file this
  command wrote and nobody changed since), it is written from the router's
  own configuration: the up-links of the firewall's ``wan`` zone as WANs, in
  the order the kernel prefers their default routes, and every WireGuard
  interface with a peer to connect to as a tunnel.  A file someone edited
  is never written.
* Each managed tunnel gets ``option nohostroute '1'`` in
  /etc/config/network, the previous value is recorded in RECORD, and
  ``wgrouter setup --restore`` (the package's prerm) puts it back.  The
  edit adds or changes that one line and leaves the rest of the user's file
  as it was, comments and layout included; the result is parsed again and
  compared before it replaces the file.

Which file is "still the example": the shipped file and the files this
command writes carry a marker line, ``# wgrouter-setup CRC ...``, where
CRC is the CRC-32 of the rest of the file.  Any edit (an option, a comment,
a file saved by LuCI, which drops comments) breaks it, and the file is the
user's from then on.
"""

from __future__ import annotations

import binascii
import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import typing

import wgrouter
from wgrouter import config
from wgrouter import uci

NETWORK = config.NETWORK
WGROUTER = config.WGROUTER
FIREWALL = "etc/config/firewall"
WIRELESS = "etc/config/wireless"
MWAN3 = "etc/config/mwan3"
MWAN3_INIT = "etc/init.d/mwan3"
# The nohostroute values before the install changed them, one
# "TUNNEL VALUE" line each ("-": the option was not set).  Under /etc, so it
# survives reboots; lib/upgrade/keep.d/wgrouter keeps it across sysupgrade.
RECORD = "etc/wgrouter/nohostroute"

# The values of the shipped example (files/etc/config/wgrouter; a test
# holds them equal).
TRACK_IPS = ("1.1.1.1", "8.8.8.8")
# LTE carriers keep UDP mappings for a short time behind CGNAT.
LTE_KEEPALIVE = 25

# netifd protocols of an up-link of its own; static counts with a gateway.
UPLINK_PROTOS = frozenset(["dhcp", "pppoe", "pppoa", "qmi", "mbim", "modemmanager", "ncm", "3g"])
# Mobile modems: the carrier's CGNAT drops idle UDP mappings quickly.
LTE_PROTOS = frozenset(["qmi", "mbim", "modemmanager", "ncm", "3g"])
CGNAT = ipaddress.ip_network("100.64.0.0/10")

MARKER = re.compile(r"^# wgrouter-setup ([0-9a-f]{8})(?:[ \t][^\n]*)?\n", re.M)
MARKER_TEXT = ("# wgrouter-setup %s (while the file is unchanged, 'wgrouter setup' may write it "
               "again: edit it and it is yours)\n")


class SetupError(wgrouter.Error):
    """wgrouter setup failed"""


# ------------------------------------------------------------ the marker


def digest(text: str) -> str:
    """CRC-32 of ``text`` without its marker line, as 8 hex digits."""
    rest = MARKER.sub("", text, count=1)
    return "%08x" % (binascii.crc32(rest.encode("utf-8", "surrogateescape")) & 0xFFFFFFFF)


def stamp(text: str) -> str:
    """``text`` with its marker line (a first line if it has none) set to
    the digest of the rest."""
    if not MARKER.search(text):
        text = MARKER_TEXT % "00000000" + text
    value = digest(text)
    return MARKER.sub(lambda m: m.group(0).replace(m.group(1), value, 1), text, count=1)


def replaceable(text: typing.Optional[str]) -> bool:
    """True while the file is the shipped example or this command's output,
    unchanged (a missing file too): it may be written."""
    if text is None:
        return True
    found = MARKER.findall(text)
    return len(found) == 1 and found[0] == digest(text)


# ------------------------------------------------------------ reading the router


def _words(section: uci.Section, option: str) -> typing.List[str]:
    value = section.options.get(option)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [w for item in items for w in item.split()]


def _text(section: uci.Section, option: str) -> str:
    value = section.options.get(option)
    return value if isinstance(value, str) else ""


def _true(section: uci.Section, option: str, default: bool = False) -> bool:
    value = _text(section, option).lower()
    if value in config._TRUE:
        return True
    if value in config._FALSE:
        return False
    return default


@dataclasses.dataclass(frozen=True)
class Wan:
    name: str
    why: str  # proto and what made it an up-link, for the file's comment
    lte: bool
    table: typing.Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the router's configuration gives: WANs in order of preference,
    tunnels, whether mwan3 chooses, and why each other network was left out."""
    wans: typing.Tuple[Wan, ...]
    tunnels: typing.Tuple[str, ...]
    mwan3: bool
    skipped: typing.Tuple[typing.Tuple[str, str], ...]


def _wan_networks(firewall: typing.Sequence[uci.Section]) -> typing.List[str]:
    """The networks of the firewall's zone named 'wan', in the zone's order
    (firewall4 and fw3 read `list network` and `option network` alike)."""
    names: typing.List[str] = []
    for section in firewall:
        if section.type == "zone" and _text(section, "name") == "wan":
            for name in _words(section, "network"):
                if name not in names:
                    names.append(name)
    return names


def _device(interfaces, name: str, depth: int = 0) -> str:
    """The configured device of an interface, through '@parent' aliases."""
    section = interfaces.get(name)
    if section is None or depth > 8:
        return ""
    words = _words(section, "device") or _words(section, "ifname")
    if words and words[0].startswith("@"):
        return _device(interfaces, words[0][1:], depth + 1)
    return words[0] if words else ""


def _metric(section: uci.Section) -> int:
    # netifd gives a default route without option metric metric 0: the
    # kernel prefers it over every WAN with a metric
    value = _text(section, "metric").strip()
    return int(value) if value.isdigit() else 0


def _mwan3_tables(root: str) -> typing.Dict[str, int]:
    """{interface: mwan3 table id} of the interfaces mwan3 has enabled.

    mwan3 numbers its tables by the position of each `config interface` in
    /etc/config/mwan3, disabled ones counted (openwrt/packages net/mwan3
    lib/mwan3/mwan3.sh, mwan3_update_iface_to_table), and its ifup handles
    only interfaces with option enabled '1'."""
    if not os.path.exists(os.path.join(root, MWAN3_INIT)):
        return {}
    try:
        sections = uci.load(os.path.join(root, MWAN3))
    except (OSError, uci.UciError):
        return {}
    tables = {}
    position = 0
    for section in sections:
        if section.type != "interface":
            continue
        position += 1
        if section.name and _true(section, "enabled"):
            tables[section.name] = position
    return tables


def plan(network: typing.Sequence[uci.Section], firewall: typing.Sequence[uci.Section],
         wireless: typing.Sequence[uci.Section] = (),
         addresses: typing.Optional[typing.Dict[str, typing.List[str]]] = None,
         mwan3_tables: typing.Optional[typing.Dict[str, int]] = None) -> Plan:
    """Decide the WANs and tunnels from parsed UCI sections.

    ``addresses``: {interface: [IPv4 address, ...]} netifd has now (a
    DHCP address inside 100.64.0.0/10 is CGNAT); ``mwan3_tables``: as
    ``_mwan3_tables`` reads them."""
    addresses = addresses or {}
    mwan3_tables = mwan3_tables or {}
    interfaces = {s.name: s for s in network if s.type == "interface" and s.name}
    clients = set()
    for section in wireless:
        if section.type == "wifi-iface" and _text(section, "mode") == "sta" \
                and not _true(section, "disabled"):
            clients.update(_words(section, "network"))
    zone = _wan_networks(firewall)
    found = []
    skipped = []
    for position, name in enumerate(zone):
        section = interfaces.get(name)
        if section is None:
            skipped.append((name, "not an interface in /" + NETWORK))
            continue
        proto = _text(section, "proto")
        if _true(section, "disabled"):
            skipped.append((name, "disabled"))
            continue
        if proto in ("dhcpv6",):
            # IPv6 is read from the device of the WAN it belongs to
            # (README: IPv6), e.g. wan6 on wan's device or on '@wan'
            twin = [other for other in zone if other != name and other in interfaces
                    and _device(interfaces, other) == _device(interfaces, name)]
            skipped.append((name, "proto dhcpv6: the IPv6 of %s, not a WAN of its own" % (
                "'%s'" % twin[0] if twin else "a WAN")))
            continue
        why = "proto %s" % (proto or "none")
        if name in clients:
            why += ", a Wi-Fi client (wifi-iface with mode sta)"
        elif proto == "static":
            if not _text(section, "gateway"):
                skipped.append((name, "proto static without option gateway: no default route"))
                continue
        elif proto not in UPLINK_PROTOS:
            skipped.append((name, "proto %s is not an up-link" % (proto or "none")))
            continue
        lte = proto in LTE_PROTOS
        if lte:
            why += " (LTE modem)"
        for address in [a.split("/")[0] for a in _words(section, "ipaddr")] + addresses.get(name, []):
            try:
                if ipaddress.ip_address(address) in CGNAT:
                    lte = True
                    why += ", address %s in %s (CGNAT)" % (address, CGNAT)
                    break
            except ValueError:
                continue
        metric = _metric(section)
        why += ", metric %s" % (metric if _text(section, "metric") else "0 (unset)")
        found.append(((metric, position), Wan(name, why, lte, mwan3_tables.get(name))))
    wans = tuple(w for _, w in sorted(found, key=lambda item: item[0]))
    tunnels = []
    for name, section in interfaces.items():
        if _text(section, "proto") != "wireguard" or _true(section, "disabled"):
            continue
        peers = [p for p in network if p.type == "wireguard_%s" % name
                 and not _true(p, "disabled") and _text(p, "endpoint_host")]
        if peers:
            tunnels.append(name)
        else:
            skipped.append((name, "WireGuard without a peer that has an endpoint_host: "
                                  "the peers connect to it"))
    return Plan(wans, tuple(tunnels), any(w.table is not None for w in wans), tuple(skipped))


# ------------------------------------------------------------ writing /etc/config/wgrouter


HEADER = """\
# wgrouter: written by 'wgrouter setup' from this router's /etc/config/network
# (WireGuard interfaces) and /etc/config/firewall (the networks of the 'wan'
# zone). The README lists every option ("Configuration (UCI)").
"""


def render(p: Plan, commented: typing.Dict[str, str] = None) -> str:
    """The /etc/config/wgrouter text for ``p``, marker included.  WANs in
    ``commented`` ({name: why}) are written commented out, with the reason."""
    commented = commented or {}
    out = [HEADER, MARKER_TEXT % "00000000", "\n", "config wgrouter 'main'\n", "\toption enabled '1'\n"]
    if p.mwan3:
        out.append("\t# mwan3 chooses the WAN: host routes go into its tables\n")
        out.append("\toption mwan3 '1'\n")
    out.append("\n# One section per WAN uplink, in order of preference: the first is the primary.\n")
    for wan in p.wans:
        lines = ["config wan '%s'\n" % wan.name]
        lines += ["\tlist track_ip '%s'\n" % ip for ip in TRACK_IPS]
        if wan.lte:
            lines.append("\t# LTE carriers use CGNAT with short UDP timeouts: keep the mapping alive\n")
            lines.append("\toption keepalive '%d'\n" % LTE_KEEPALIVE)
        if p.mwan3 and wan.table is not None:
            lines.append("\toption table '%d'\n" % wan.table)
        out.append("\n# %s: %s\n" % (wan.name, wan.why))
        if wan.name in commented:
            out.append("# left out: %s\n" % commented[wan.name])
            lines = ["#" + line for line in lines]
        out.extend(lines)
    if p.tunnels:
        out.append("\n# The WireGuard interfaces to manage (give each an in-tunnel probe target,\n"
                   "# an address behind the tunnel: option probe).\n")
    for i, name in enumerate(p.tunnels):
        out.append("%sconfig tunnel '%s'\n\toption enabled '1'\n" % ("\n" if i else "", name))
    if not p.tunnels:
        out.append("\n# No WireGuard interface with a peer endpoint was found: add one\n"
                   "# 'config tunnel' section per interface to manage, e.g.\n"
                   "#config tunnel 'wg0'\n#\toption enabled '1'\n")
    return stamp("".join(out))


def _validate(root: str, network, text: str):
    """config.from_sections on the text: (warnings, [ConfigError])."""
    path = os.path.join(root, WGROUTER)
    try:
        _, warnings = config.from_sections(network, uci.parse(text, path), os.path.join(root, NETWORK),
                                           path, config._usb_net(root))
    except config.ConfigError as e:
        return [], e.errors
    return warnings, []


def write_config(root: str, network, p: Plan) -> typing.Tuple[str, typing.Dict[str, str]]:
    """The text for p, with each WAN the loader refuses (a modem whose network
    device is not found yet) commented out with its error: (text, {WAN: error})."""
    commented: typing.Dict[str, str] = {}
    names = {w.name for w in p.wans}
    while True:
        text = render(p, commented)
        _, errors = _validate(root, network, text)
        # the network file's own problems are the user's to fix, whatever
        # this file says; the daemon and check-config name them
        errors = [e for e in errors if e.file == os.path.join(root, WGROUTER)]
        bad = {e.section: str(e) for e in errors if e.section in names and e.section not in commented}
        if not errors:
            return text, commented
        if not bad:
            raise SetupError("the configuration written from this router does not load:\n" +
                             "\n".join(str(e) for e in errors))
        commented.update(bad)


# ------------------------------------------------------------ editing /etc/config/network


_CONFIG_LINE = re.compile(r"[ \t]*(?:config|c)[ \t]")


def _option_line(option: str):
    return re.compile(r"([ \t]*)(?:option|o)[ \t]+(['\"]?)%s\2(?=[ \t;#\r\n]|$)" % re.escape(option))


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def _blocks(lines: typing.List[str], name: str) -> typing.List[typing.Tuple[int, int]]:
    """[(config line index, end index)] of the config statements of section
    ``name`` (a named section may be given more than once)."""
    starts = []
    for i, line in enumerate(lines):
        if _CONFIG_LINE.match(line):
            try:
                parsed = uci.parse(line, "-")
            except uci.UciError:
                parsed = []
            starts.append((i, parsed[0].name if parsed else None))
    blocks = []
    for k, (i, section) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        if section == name:
            blocks.append((i, end))
    return blocks


def _same_but(old: str, new: str, section: str, option: str, value: typing.Optional[str]) -> bool:
    """new parses as old with only section.option changed to value (None: unset)."""
    try:
        a, b = uci.parse(old, "-"), uci.parse(new, "-")
    except uci.UciError:
        return False
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if (x.type, x.name) != (y.type, y.name):
            return False
        want = dict(x.options)
        if x.name == section:
            want.pop(option, None)
            if value is not None:
                want[option] = value
        if want != y.options:
            return False
    return True


def set_option(text: str, section: str, option: str, value: typing.Optional[str]) -> str:
    """``text`` with ``option`` of the named ``section`` set to ``value`` (None:
    removed), every other line as it was.  Raises SetupError when the edit
    would change anything else."""
    lines = text.splitlines(keepends=True)
    blocks = _blocks(lines, section)
    if not blocks:
        raise SetupError("no section '%s'" % section)
    match = _option_line(option)
    found = [i for start, end in blocks for i in range(start + 1, end) if match.match(lines[i])]
    if value is None:
        for i in reversed(found):
            del lines[i]
    elif found:
        for i in found:
            lines[i] = "%soption %s '%s'%s" % (match.match(lines[i]).group(1), option, value, _eol(lines[i]))
    else:
        start, end = blocks[0]
        if not lines[start].endswith("\n"):
            lines[start] += "\n"
        indent = "\t"
        for line in lines[start + 1:end]:
            m = re.match(r"([ \t]+)(?:option|list|o|l)[ \t]", line)
            if m:
                indent = m.group(1)
                break
        lines.insert(start + 1, "%soption %s '%s'%s" % (indent, option, value, _eol(lines[start])))
    new = "".join(lines)
    if not _same_but(text, new, section, option, value):
        raise SetupError("section '%s': cannot change option %s alone (the lines around it are "
                         "unusual); set option %s '%s' by hand" % (section, option, option, value))
    return new


def _write_like(path: str, text: str) -> None:
    """Replace ``path`` in one step, keeping its mode and owner, under the
    lock uci takes on a config file while it commits (libuci file.c,
    uci_file_commit: flock on the file, then rename of a temporary file in
    the same directory whose name starts with a dot, which uci skips)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - every Linux Python has it
        fcntl = None
    directory, name = os.path.split(path)
    st = os.stat(path) if os.path.exists(path) else None
    tmp = os.path.join(directory, ".%s.wgrouter-%d" % (name, os.getpid()))
    lock = open(path, "a") if st is not None else None
    try:
        if lock is not None and fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                pass
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if lock is not None:
            lock.close()


def _read_text(path: str) -> typing.Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None


def read_record(root: str) -> typing.Dict[str, str]:
    record = {}
    text = _read_text(os.path.join(root, RECORD)) or ""
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and not line.startswith("#"):
            record[words[0]] = words[1]
    return record


def _write_record(root: str, record: typing.Dict[str, str]) -> None:
    path = os.path.join(root, RECORD)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ["# nohostroute in /etc/config/network before wgrouter's install set it "
             "('-': not set); 'wgrouter setup --restore' (package removal) puts it back\n"]
    lines += ["%s %s\n" % item for item in record.items()]
    with open(path, "w") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def managed_tunnels(sections: typing.Sequence[uci.Section], network) -> typing.List[str]:
    """Enabled tunnels of /etc/config/wgrouter that are WireGuard interfaces."""
    wg = {s.name for s in network if s.type == "interface" and _text(s, "proto") == "wireguard"}
    names = []
    for section in sections:
        if section.type != "tunnel" or not _true(section, "enabled", True):
            continue
        name = _text(section, "interface") or section.name
        if name in wg and name not in names:
            names.append(name)
    return names


def pin_nohostroute(root: str, tunnels: typing.Sequence[str], dry_run: bool = False) -> typing.List[str]:
    """Set nohostroute '1' on each tunnel the record does not know yet, and
    record the value it had.  A tunnel recorded before (a reinstall, an
    upgrade) is left as the user has it now."""
    path = os.path.join(root, NETWORK)
    text = _read_text(path)
    if text is None:
        raise SetupError("/%s: cannot read it" % NETWORK)
    record = read_record(root)
    sections = {s.name: s for s in uci.parse(text, path) if s.type == "interface" and s.name}
    notes = []
    changed = False
    for name in tunnels:
        if name in record or name not in sections:
            continue
        old = sections[name].options.get("nohostroute")
        old = old if isinstance(old, str) else None
        record[name] = old if old is not None else "-"
        if old is not None and _true(sections[name], "nohostroute"):
            notes.append("/%s: %s: nohostroute is already '%s'" % (NETWORK, name, old))
            continue
        try:
            text = set_option(text, name, "nohostroute", "1")
        except SetupError as e:
            # check-config names the tunnel until it is set by hand
            del record[name]
            notes.append("/%s: %s" % (NETWORK, e))
            continue
        changed = True
        notes.append("/%s: %s: set option nohostroute '1' (was %s): netifd no longer pins the endpoint "
                     "route to one WAN; it takes effect when %s next comes up ('ifup %s' or a reboot). "
                     "Removing the package puts it back"
                     % (NETWORK, name, "'%s'" % old if old is not None else "not set", name, name))
    if not dry_run:
        if changed:
            _write_like(path, text)
        if record != read_record(root):
            _write_record(root, record)
    return notes


def restore(root: str) -> typing.List[str]:
    """Put back the nohostroute values the install changed (package removal).
    A value the user changed since is left alone."""
    record = read_record(root)
    if not record:
        return []
    path = os.path.join(root, NETWORK)
    text = _read_text(path)
    notes = []
    if text is not None:
        original = text
        sections = {s.name: s for s in uci.parse(text, path) if s.type == "interface" and s.name}
        for name, old in record.items():
            section = sections.get(name)
            if section is None or old == _text(section, "nohostroute") or \
                    (old != "-" and _true(section, "nohostroute") and old.lower() in config._TRUE):
                continue
            if _text(section, "nohostroute") != "1":
                notes.append("/%s: %s: nohostroute was changed since the install; left as it is"
                             % (NETWORK, name))
                continue
            try:
                text = set_option(text, name, "nohostroute", None if old == "-" else old)
            except SetupError as e:
                notes.append("/%s: %s" % (NETWORK, e))
                continue
            notes.append("/%s: %s: %s again, as before the install: netifd pins the endpoint "
                         "route to a WAN again from the next 'ifup %s' (or reboot)"
                         % (NETWORK, name, "option nohostroute removed" if old == "-"
                            else "option nohostroute '%s'" % old, name))
        if text != original:
            _write_like(path, text)
    os.unlink(os.path.join(root, RECORD))
    try:
        os.rmdir(os.path.dirname(os.path.join(root, RECORD)))
    except OSError:
        pass
    return notes


# ------------------------------------------------------------ the command


def live_addresses() -> typing.Dict[str, typing.List[str]]:
    """{interface: [IPv4 address]} from netifd, when it runs (not at first boot)."""
    try:
        r = subprocess.run(["ubus", "call", "network.interface", "dump"], capture_output=True,
                           text=True, timeout=5)
        dump = json.loads(r.stdout) if r.returncode == 0 else {}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    result = {}
    for iface in dump.get("interface", []) if isinstance(dump, dict) else []:
        if isinstance(iface, dict) and isinstance(iface.get("interface"), str):
            result[iface["interface"]] = [a.get("address") for a in iface.get("ipv4-address") or []
                                          if isinstance(a, dict) and isinstance(a.get("address"), str)]
    return result


def _load(root: str, rel: str) -> typing.List[uci.Section]:
    path = os.path.join(root, rel)
    try:
        return uci.load(path)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SetupError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    except uci.UciError as e:
        raise SetupError(str(e)) from None


def setup(root: str = "/", dry_run: bool = False,
          addresses: typing.Optional[typing.Dict[str, typing.List[str]]] = None) -> typing.List[str]:
    """Write /etc/config/wgrouter while it may be written, then pin
    nohostroute on its managed tunnels; returns what it did, one line each."""
    network = _load(root, NETWORK)
    if not network:
        raise SetupError("/%s: missing or empty" % NETWORK)
    wpath = os.path.join(root, WGROUTER)
    current = _read_text(wpath)
    notes = []
    if replaceable(current):
        if addresses is None:
            addresses = live_addresses() if root == "/" else {}
        p = plan(network, _load(root, FIREWALL), _load(root, WIRELESS), addresses, _mwan3_tables(root))
        for name, why in p.skipped:
            notes.append("not used: %s: %s" % (name, why))
        if not p.wans:
            notes.append("/%s: left as it is: the firewall's wan zone has no up-link; add a "
                         "'config wan' section per up-link, primary first" % WGROUTER)
            return notes
        text, left_out = write_config(root, network, p)
        notes += ["WAN '%s' written commented out: %s" % item for item in left_out.items()]
        if text == current:
            notes.append("/%s: already written from this router's configuration" % WGROUTER)
        else:
            if dry_run:
                notes.append(text.rstrip("\n"))
            else:
                os.makedirs(os.path.dirname(wpath), exist_ok=True)
                _write_like(wpath, text)
            notes.append("/%s: written: WANs %s; tunnels %s (a running daemon takes it on "
                         "'/etc/init.d/wgrouter reload')" % (
                WGROUTER, ", ".join(w.name + (" (LTE, keepalive %d)" % LTE_KEEPALIVE if w.lte else "")
                                    for w in p.wans if w.name not in left_out) or "none",
                ", ".join(p.tunnels) or "none"))
        sections = uci.parse(text, wpath)
    else:
        notes.append("/%s: edited by hand, left as it is" % WGROUTER)
        sections = _load(root, WGROUTER)
    notes += pin_nohostroute(root, managed_tunnels(sections, network), dry_run)
    return notes
