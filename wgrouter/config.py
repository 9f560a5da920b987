"""Load /etc/config/network and /etc/config/wgrouter into a ``model.Config``.

netifd's own WireGuard configuration (``config interface`` with ``proto
'wireguard'`` and its ``config wireguard_<iface>`` peers) stays the single
source of keys, endpoints and allowed IPs; /etc/config/wgrouter only says
which tunnels to manage, which WANs to use in which order, and adds extras
(endpoint candidates, probe targets, keepalive per WAN).

Everything is validated before anything is returned: on any problem
``load`` raises one ``ConfigError`` that lists every problem found, one per
line, each naming the file, the section and the option, so that the caller
applies nothing.  ``check`` returns the warnings: things that work but are
probably not what the user wants.  Secrets (private and preshared keys, the
MQTT password) never appear in a message.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import math
import os
import re
import typing

import wgrouter
from wgrouter import model
from wgrouter import uci

NETWORK = "etc/config/network"
WGROUTER = "etc/config/wgrouter"

# Options whose values must never be shown in a message.
SECRET = frozenset(["private_key", "preshared_key", "password"])

# uci's boolean words, as /lib/functions.sh config_get_bool reads them.
_TRUE = frozenset(["1", "yes", "on", "true", "enabled"])
_FALSE = frozenset(["0", "no", "off", "false", "disabled"])

# netifd names the device of a PPP-based interface "<proto>-<interface>".
_PPP_PROTOS = frozenset(["ppp", "pppoe", "pppoa", "pptp", "l2tp", "3g"])

_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class ConfigError(wgrouter.Error):
    """invalid configuration"""

    def __init__(self, message: str, file: typing.Optional[str] = None,
                 section: typing.Optional[str] = None, option: typing.Optional[str] = None,
                 errors: typing.Sequence["ConfigError"] = ()):
        super().__init__(message)
        self.file = file
        self.section = section
        self.option = option
        # every problem found; this error itself when there was only one
        self.errors = list(errors) or [self]


# ------------------------------------------------------------ values


def is_key(text: str) -> bool:
    """A WireGuard key: 32 bytes in base64, 44 characters ending in '='."""
    if len(text) != 44 or not text.endswith("="):
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except ValueError:
        return False


is_ip = model.is_ip


def is_hostname(text: str) -> bool:
    """A DNS name; dotted numbers that are no IPv4 address are refused,
    because getaddrinfo would read "10.1" as 10.0.0.1."""
    if re.fullmatch(r"[0-9.]+", text):
        return False
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def parse_endpoint(text: str, default_port: int = 51820) -> model.Endpoint:
    """Parse "host", "host:port", "1.2.3.4:port", "[v6]" or "[v6]:port".

    Raises ValueError whose message says what is wrong.
    """
    port_text = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("is missing the closing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError("has text after ']' that is not ':port'")
            port_text = rest[1:]
        if not is_ip(host, 6):
            raise ValueError("has no IPv6 address inside '[...]'")
    elif text.count(":") > 1:
        if is_ip(text, 6):
            raise ValueError("is an IPv6 address without a port: write it as [address]:port")
        raise ValueError("is not host:port")
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        if not (is_ip(host, 4) or is_hostname(host)):
            raise ValueError("is not a host name or IP address with an optional :port")
    port = default_port
    if port_text is not None:
        if not _INT.match(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError("has a port that is not between 1 and 65535")
        port = int(port_text)
    return model.Endpoint(host, port)


def _number(value: float) -> str:
    return "%d" % value if float(value).is_integer() else repr(value)


# ------------------------------------------------------------ validate_data's types

# /etc/init.d/wgrouter has procd's validate_data (openwrt/ubox validate/cli.c,
# rules in validate/validate.c) check `config wgrouter 'main'` against SPEC,
# and the daemon reads the same options: both must accept exactly the same
# values, and the daemon reads each as the C library does.  validate_data
# runs in the "C" locale; ranges and rules across options are the daemon's.

# validate.c dt_type_bool: strcasecmp against these ten words.  (cli.c's
# bool_to_num, which gives the init script the value, compares them case
# sensitively: 'Yes' is valid but reaches the script as neither 1 nor 0.)
_DT_TRUE = frozenset(["1", "on", "true", "yes", "enabled"])
_DT_FALSE = frozenset(["0", "off", "false", "no", "disabled"])

# dt_type_uint: the first character must be a hex digit (so no blank and no
# sign), then strtoul(value, &end, 0) must use up the whole value: "0x" hex,
# a leading 0 octal ("010" is 8, "08" is refused), else decimal.  strtoul
# saturates a value too large without refusing it.
_DT_UINT = re.compile(r"(?:(?P<hex>0[xX][0-9a-fA-F]+)|(?P<oct>0[0-7]*)|(?P<dec>[1-9][0-9]*))\Z")

# dt_type_ufloat: strtod(value, &end) must use up the whole value.  strtod
# skips leading blanks (isspace), takes a sign, a decimal or hex ("0x1p3")
# number, inf[inity] or nan[(chars)], in any case.
_DT_STRTOD = re.compile(
    r"[ \t\n\v\f\r]*[+-]?(?:"
    r"(?P<dec>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<hex>0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)"
    r"|(?P<inf>(?i:inf|infinity))|(?P<nan>(?i:nan)(?:\([0-9A-Za-z_]*\))?))\Z")

# dt_type_ufloat then stores the double in an int and wants it >= 0: the
# fraction is cut off, so anything above -1 passes ("-0.5" too).  A double
# outside int's range (or NaN) makes that conversion undefined in C; x86
# gives INT_MIN, which fails, and wgrouter refuses those values everywhere.
_INT_LIMIT = 2.0 ** 31


def _dt_bool(text: str) -> typing.Optional[bool]:
    word = text.lower()
    if word in _DT_TRUE:
        return True
    if word in _DT_FALSE:
        return False
    return None


def _dt_uinteger(text: str) -> typing.Optional[int]:
    m = _DT_UINT.match(text)
    if not m:
        return None
    if m.group("hex"):
        return int(text, 16)
    if m.group("oct"):
        return int(text, 8)
    return int(text)


def _dt_ufloat(text: str) -> typing.Optional[float]:
    m = _DT_STRTOD.match(text)
    if not m:
        return None
    body = text.lstrip(" \t\n\v\f\r")
    number = float.fromhex(body) if m.group("hex") else float(body.split("(")[0])
    if not -1 < number < _INT_LIMIT:
        return None
    return number


# datatype -> (parser giving None for a value validate_data refuses, what it takes)
DATATYPES: typing.Dict[str, typing.Tuple[typing.Callable[[str], typing.Any], str]] = {
    "bool": (_dt_bool, "a boolean (1/0, yes/no, on/off, true/false, enabled/disabled)"),
    "uinteger": (_dt_uinteger, "an unsigned integer (decimal, 0x hex or 0 octal; no sign or blank)"),
    "ufloat": (_dt_ufloat, "a number of at least 0 (e.g. 2.5)"),
}


def parse_datatype(kind: str, text: str):
    """``text`` read as validate_data's type ``kind``; None where
    validate_data refuses it."""
    return DATATYPES[kind][0](text)


# ------------------------------------------------------------ settings spec

# (option) -> (minimum, minimum allowed?, maximum); absent options are >= 0.
_SETTING_RANGES = {
    # zero would make the monitor spin
    "check_interval": (0, False, None),
    "handshake_timeout": (0, False, None),
    "probe_timeout": (0, False, None),
    "failback_holddown": (0, True, None),
    "holddown_max": (0, True, None),
    "backoff_base": (0, False, None),
    "backoff_max": (0, False, None),
    "dns_ttl_min": (0, True, None),
    "dns_ttl_max": (0, False, None),
    # the event ring lives in RAM on a small router
    "events": (1, True, 1024),
}


def _setting_kind(field: dataclasses.Field) -> type:
    return type(field.default)


def _spec_type(field: dataclasses.Field) -> str:
    kind = _setting_kind(field)
    if kind is bool:
        return "bool"
    # the init script's check is coarse (validate_data has no "greater than
    # 0" for a float); load() applies the exact bounds of _SETTING_RANGES
    if kind is int:
        return "uinteger"
    return "ufloat"


def _spec_default(field: dataclasses.Field) -> str:
    if _setting_kind(field) is bool:
        return "1" if field.default else "0"
    return _number(field.default)


# The `config wgrouter 'main'` options as (section type, option, uci type,
# default); the init script's validation spec must say the same.
SPEC: typing.List[typing.Tuple[str, str, str, str]] = [
    ("wgrouter", f.name, _spec_type(f), _spec_default(f)) for f in dataclasses.fields(model.Settings)
]


def validate_spec() -> typing.List[str]:
    """SPEC in uci_load_validate's 'name:type:default' form."""
    return ["%s:%s:%s" % (option, kind, default) for _, option, kind, default in SPEC]


# ------------------------------------------------------------ reading sections


class _Report:
    """Collects errors and warnings, each naming file, section and option."""

    def __init__(self):
        self.errors: typing.List[ConfigError] = []
        self.warnings: typing.List[str] = []
        # the daemon runs with these, but they defeat it: check-config
        # reports them as errors
        self.defeats: typing.List[str] = []

    @staticmethod
    def message(file, section, option, text) -> str:
        where = []
        if section is not None:
            where.append("section '%s' (%s)" % (section.ref, section.type))
        if option is not None:
            where.append("option '%s'" % option)
        if where:
            return "%s: %s: %s" % (file, ", ".join(where), text)
        return "%s: %s" % (file, text)

    def error(self, file, section, option, text) -> None:
        ref = section.ref if section is not None else None
        self.errors.append(ConfigError(self.message(file, section, option, text), file, ref, option))

    def warn(self, file, section, option, text) -> None:
        self.warnings.append(self.message(file, section, option, text))

    def raise_errors(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            first = self.errors[0]
            raise ConfigError("\n".join(str(e) for e in self.errors), first.file, first.section,
                              first.option, self.errors)


def _show(option: str, value: str) -> str:
    if option in SECRET:
        return "the value (not shown)"
    return "'%s'" % value


class _Options:
    """Typed access to one section's options; problems go to the report."""

    def __init__(self, report: _Report, file: str, section: uci.Section):
        self.report = report
        self.file = file
        self.section = section

    def error(self, option, text) -> None:
        self.report.error(self.file, self.section, option, text)

    def warn(self, option, text) -> None:
        self.report.warn(self.file, self.section, option, text)

    def known(self, names: typing.Iterable[str]) -> None:
        names = list(names)
        for option in self.section.options:
            if option not in names:
                self.error(option, "unknown option (known: %s)" % ", ".join(names))

    def has(self, option: str) -> bool:
        return option in self.section.options

    def text(self, option: str, default=None):
        value = self.section.options.get(option)
        if value is None:
            return default
        if isinstance(value, list):
            self.error(option, "is a list; give it once, with 'option'")
            return default
        return value

    def words(self, option: str) -> typing.List[str]:
        """A list option; an 'option' with blanks counts as a list, as
        config_get and netifd's list handling read it."""
        value = self.section.options.get(option)
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [word for item in items for word in item.split()]

    def boolean(self, option: str, default: bool) -> bool:
        value = self.text(option)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.error(option, "%s is not a boolean (1/0, yes/no, on/off, true/false)" % _show(option, value))
        return default

    def integer(self, option: str, default, low: int, high: int):
        value = self.text(option)
        if value is None:
            return default
        if _INT.match(value.strip()) and low <= int(value) <= high:
            return int(value)
        self.error(option, "%s is not an integer between %d and %d" % (_show(option, value), low, high))
        return default

    def number(self, option: str, default, low: float, low_ok: bool, high=None):
        value = self.text(option)
        if value is None:
            return default
        number = float(value) if _FLOAT.match(value.strip()) else math.nan
        return self.bounded(option, value, number, default, low, low_ok, high)

    def bounded(self, option: str, text: str, number: float, default, low: float, low_ok: bool, high=None):
        """number (read from text) if it is within the bounds, else default."""
        ok = math.isfinite(number) and (number >= low if low_ok else number > low)
        if ok and high is not None:
            ok = number <= high
        if ok:
            return number
        bound = "%s %s" % ("at least" if low_ok else "greater than", _number(low))
        if high is not None:
            bound += " and at most %s" % _number(high)
        self.error(option, "%s is not a number %s" % (_show(option, text), bound))
        return default

    def setting(self, option: str, kind: str, default, low, low_ok: bool, high):
        """An option the init script validates: validate_data's type
        ``kind`` first, then the daemon's bounds (none for a bool)."""
        text = self.text(option)
        if text is None:
            return default
        value = parse_datatype(kind, text)
        if value is None:
            self.error(option, "%s is not %s" % (_show(option, text), DATATYPES[kind][1]))
            return default
        if kind == "bool":
            return value
        if kind == "uinteger":
            if low <= value <= high:
                return value
            self.error(option, "%s is not an integer between %d and %d" % (_show(option, text), low, high))
            return default
        return self.bounded(option, text, value, default, low, low_ok, high)

    def ip(self, option: str, value: str, version: typing.Optional[int] = None) -> bool:
        if is_ip(value, version):
            return True
        what = {None: "an IP address", 4: "an IPv4 address", 6: "an IPv6 address"}[version]
        self.error(option, "%s is not %s" % (_show(option, value), what))
        return False


# ------------------------------------------------------------ the loader


class _Builder:
    def __init__(self, network, wgrouter_sections, network_file, wgrouter_file, usb_net):
        self.report = _Report()
        self.network = network
        self.sections = wgrouter_sections
        self.nfile = network_file
        self.wfile = wgrouter_file
        self.usb_net = usb_net
        self.interfaces = {s.name: s for s in network if s.type == "interface" and s.name}
        self.relays: typing.Dict[typing.Tuple[str, str], typing.Tuple[model.Endpoint, ...]] = {}

    def opts(self, section: uci.Section) -> _Options:
        return _Options(self.report, self.wfile, section)

    def netopts(self, section: uci.Section) -> _Options:
        return _Options(self.report, self.nfile, section)

    # -------------------------------------------------------- main, mqtt

    def settings(self) -> model.Settings:
        # /etc/init.d/wgrouter validates `config wgrouter 'main'` and takes
        # option enabled from it alone: read no other section
        main = None
        for section in self.sections:
            if section.type != "wgrouter":
                continue
            if section.name == "main":
                main = section
                continue
            self.report.error(self.wfile, section, None, "only one 'config wgrouter' section is allowed, and "
                              "it must be named 'main' (config wgrouter 'main'): the init script reads "
                              "no other, so its options here (option enabled too) would be ignored")
        if main is None:
            return model.Settings()
        o = self.opts(main)
        fields = dataclasses.fields(model.Settings)
        o.known(f.name for f in fields)
        values = {}
        for f in fields:
            kind = _spec_type(f)
            low, low_ok, high = _SETTING_RANGES.get(f.name, (0, True, None))
            if kind == "uinteger" and high is None:
                high = 2 ** 31 - 1
            values[f.name] = o.setting(f.name, kind, f.default, low, low_ok, high)
        enabled = main.options.get("enabled")
        if (isinstance(enabled, str) and parse_datatype("bool", enabled) is not None
                and enabled not in _DT_TRUE | _DT_FALSE):
            o.warn("enabled", "'%s' is valid, but the init script reads only lower-case words, so it "
                   "does not start the daemon; write '1' or '0'" % enabled)
        if values["backoff_max"] < values["backoff_base"]:
            o.error("backoff_max", "'%s' is less than backoff_base (%s)"
                    % (_number(values["backoff_max"]), _number(values["backoff_base"])))
        if values["dns_ttl_max"] < values["dns_ttl_min"]:
            o.error("dns_ttl_max", "'%s' is less than dns_ttl_min (%s)"
                    % (_number(values["dns_ttl_max"]), _number(values["dns_ttl_min"])))
        return model.Settings(**values)

    def topic(self, o: _Options, option: str, default: str) -> str:
        value = o.text(option, default)
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            o.error(option, "'%s' is not an MQTT topic prefix (no '+', '#', leading or trailing '/')"
                    % value)
            return default
        return value

    def mqtt(self) -> model.MqttSettings:
        found = [s for s in self.sections if s.type == "mqtt"]
        for extra in found[1:]:
            self.report.error(self.wfile, extra, None, "only one 'config mqtt' section is allowed, "
                              "the first is '%s'" % found[0].ref)
        if not found:
            return model.MqttSettings()
        o = self.opts(found[0])
        d = model.MqttSettings()
        o.known(f.name for f in dataclasses.fields(model.MqttSettings))
        protocol = o.text("protocol", d.protocol)
        if protocol not in ("3.1.1", "5"):
            o.error("protocol", "'%s' is not one of '3.1.1', '5'" % protocol)
            protocol = d.protocol
        host = o.text("host", d.host)
        if not (is_ip(host) or is_hostname(host)):
            o.error("host", "'%s' is not a host name or IP address" % host)
        identity = o.text("identity", d.identity)
        if identity is not None and any(c in identity for c in "+#/\0"):
            o.error("identity", "'%s' cannot be an MQTT topic level (no '+', '#', '/')" % identity)
        return model.MqttSettings(
            enabled=o.boolean("enabled", d.enabled),
            host=host,
            port=o.integer("port", d.port, 1, 65535),
            protocol=protocol,
            username=o.text("username", d.username),
            password=o.text("password", d.password),
            tls=o.boolean("tls", d.tls),
            ca_file=o.text("ca_file", d.ca_file),
            cert_file=o.text("cert_file", d.cert_file),
            key_file=o.text("key_file", d.key_file),
            prefix=self.topic(o, "prefix", d.prefix),
            identity=identity,
            heartbeat=o.number("heartbeat", d.heartbeat, 0, False),
            qos=o.integer("qos", d.qos, 0, 2),
            ha_discovery=o.boolean("ha_discovery", d.ha_discovery),
            ha_prefix=self.topic(o, "ha_prefix", d.ha_prefix),
            queue_max=o.integer("queue_max", d.queue_max, 1, 100000),
        )

    # -------------------------------------------------------- WANs

    def device_of(self, name: str, depth: int = 0) -> typing.Tuple[typing.Optional[str], str]:
        """netifd's kernel device of an interface, or (None, why not and what to set)."""
        section = self.interfaces.get(name)
        if section is None:
            return None, "interface '%s' is not in %s; set option device" % (name, self.nfile)
        proto = section.options.get("proto")
        proto = proto if isinstance(proto, str) else ""
        if proto in _PPP_PROTOS:
            return "%s-%s" % (proto, name), ""
        if section.options.get("type") == "bridge":
            return "br-%s" % name, ""
        words = []
        for option in ("device", "ifname"):
            value = section.options.get(option)
            if value:
                words = (value if isinstance(value, list) else [value])[0].split()
                break
        if not words:
            # e.g. a Wi-Fi client uplink: netifd attaches the wifi-iface
            # of /etc/config/wireless (option network) to it.  "": the
            # daemon learns the device from netifd's ifup event (DEVICE).
            return "", ("interface '%s' in %s has no option device (or ifname), as a Wi-Fi client "
                        "uplink has none (netifd adds the wifi-iface whose option network is '%s'): "
                        "its device is learned from netifd's ifup event, and the WAN counts as down "
                        "until then; set option device in this 'config wan' section to name it "
                        "(e.g. 'phy0-sta0'; 'ifstatus %s' shows it as l3_device)"
                        % (name, self.nfile, name, name))
        device = words[0]
        if device.startswith("@"):
            # an alias interface runs on its parent's device
            if depth > 8:
                return None, "interface '%s' in %s is an alias loop; set option device" % (name, self.nfile)
            return self.device_of(device[1:], depth + 1)
        if device.startswith("/"):
            # qmi, mbim, ncm: the option names the modem's control device,
            # the data device is the network device of the same USB function;
            # modemmanager: the modem's sysfs path, the network device is in
            # one of its USB interfaces
            found = self.usb_net(device) if self.usb_net else None
            if found:
                return found, ""
            # also modemmanager's sysfs path of the modem (/sys/devices/...)
            return None, ("interface '%s' in %s (proto %s) names the modem '%s', not a network device; "
                          "set option device in this 'config wan' section to the modem's network "
                          "device (e.g. 'wwan0')" % (name, self.nfile, proto or "none", device))
        return device, ""

    def wans(self) -> typing.Tuple[model.Wan, ...]:
        wans: typing.List[model.Wan] = []
        seen: typing.Dict[str, uci.Section] = {}
        for section in self.sections:
            if section.type != "wan":
                continue
            o = self.opts(section)
            o.known(["interface", "device", "keepalive", "track_ip", "dns_server", "table"])
            name = o.text("interface", section.name)
            if not name:
                o.error(None, "needs a section name or option interface")
                continue
            if name in seen:
                o.error("interface" if o.has("interface") else None,
                        "WAN '%s' is already given in section '%s'" % (name, seen[name].ref))
                continue
            seen[name] = section
            if name not in self.interfaces:
                o.warn("interface" if o.has("interface") else None,
                       "interface '%s' is not in %s" % (name, self.nfile))
            device = o.text("device")
            if device is None:
                device, why = self.device_of(name)
                if device is None:
                    o.error(None, why)
                elif not device:
                    o.warn(None, why)
            # IPv4 and IPv6 targets: each family of the WAN is probed with its own
            track = [ip for ip in o.words("track_ip") if o.ip("track_ip", ip)]
            dns = [ip for ip in o.words("dns_server") if o.ip("dns_server", ip)]
            wans.append(model.Wan(
                name=name,
                device=device or "",
                keepalive=o.integer("keepalive", None, 0, 65535),
                track_ips=tuple(track),
                dns_servers=tuple(dns),
                table=o.integer("table", None, 1, 2 ** 32 - 1),
            ))
        if not wans:
            self.report.error(self.wfile, None, None, "no WAN: add a 'config wan' section for each uplink, "
                              "primary first")
        elif len(wans) == 1:
            self.report.warn(self.wfile, seen[wans[0].name], None,
                             "only one WAN: there is nothing to fail over to")
        return tuple(wans)

    # -------------------------------------------------------- tunnels

    def netifd_peer(self, tunnel: str, section: uci.Section, extras) -> typing.Optional[model.Peer]:
        o = self.netopts(section)
        key = o.text("public_key")
        if key is None:
            o.error(None, "has no option public_key")
            return None
        if not is_key(key):
            o.error("public_key", "'%s' is not a WireGuard key (44 characters of base64 ending in '=')" % key)
            return None
        psk = section.options.get("preshared_key")
        if psk is not None and (not isinstance(psk, str) or not is_key(psk)):
            o.warn("preshared_key", "the value (not shown) is not a WireGuard key")
        port = o.integer("endpoint_port", 51820, 1, 65535)
        endpoints = []
        host = o.text("endpoint_host")
        if host:
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if is_ip(host) or is_hostname(host):
                endpoints.append(model.Endpoint(host, port))
            else:
                o.error("endpoint_host", "'%s' is not a host name or IP address" % host)
        for item in extras:
            endpoints.append(item)
        allowed = []
        for net in o.words("allowed_ips"):
            try:
                ipaddress.ip_network(net, strict=False)
                allowed.append(net)
            except ValueError:
                o.error("allowed_ips", "'%s' is not an IP network (address/prefix)" % net)
        keepalive = o.integer("persistent_keepalive", 0, 0, 65535)
        return model.Peer(
            tunnel=tunnel,
            section=section.ref,
            public_key=key,
            endpoints=tuple(endpoints),
            allowed_ips=tuple(allowed),
            keepalive=keepalive,
        )

    def probe_of(self, peer: model.Peer, every, tunnel: uci.Section, probe: typing.Optional[str]) -> model.Peer:
        """The peer with its in-tunnel probe: its own `config peer` probe, else
        the tunnel's, if WireGuard sends a packet to it to this peer: to the
        peer whose allowed_ips hold it with the longest prefix (the last one
        on a tie).  Another target would test another peer, or none.
        ``every``: {netifd section: (allowed_ips, own probe)} of the tunnel."""
        def why_not(address):
            ip = ipaddress.ip_address(address)
            holders = [(net.prefixlen, i, ref) for i, (ref, (nets, _)) in enumerate(every.items())
                       for net in (ipaddress.ip_network(n, strict=False) for n in nets) if ip in net]
            holder = max(holders)[2] if holders else None
            if holder == peer.section:
                return None
            text = "'%s' is not in the allowed_ips of peer '%s' (%s)"
            if any(ref == peer.section for _, _, ref in holders):
                text = ("'%%s' is in the allowed_ips of peer '%%s' (%%s), but WireGuard sends it to peer "
                        "'%s', whose allowed_ips hold it more narrowly" % holder)
            return text % (address, peer.section, ", ".join(peer.allowed_ips) or "none")
        own = every[peer.section][1]
        if own is not None:
            why = why_not(own[1])
            if why is None:
                return dataclasses.replace(peer, probe=own[1])
            self.opts(own[0]).error("probe", "%s: it would test another peer, or none" % why)
        elif probe is not None:
            why = why_not(probe)
            if why is None:
                return dataclasses.replace(peer, probe=probe)
            self.opts(tunnel).warn("probe", "%s: that peer gets no in-tunnel probe; give it one in a "
                                   "'config peer' section" % why)
        return peer

    def extras(self, managed: typing.Dict[str, uci.Section]):
        """wgrouter's `config peer` sections: {(tunnel, netifd section): (endpoints,
        (section, probe) or None)}."""
        result = {}
        owner: typing.Dict[typing.Tuple[str, str], uci.Section] = {}
        for section in self.sections:
            if section.type != "peer":
                continue
            o = self.opts(section)
            o.known(["tunnel", "public_key", "section", "endpoint", "probe", "relay"])
            tunnel = o.text("tunnel")
            key = o.text("public_key")
            ref = o.text("section")
            endpoints = []
            for item in o.words("endpoint"):
                try:
                    endpoints.append(parse_endpoint(item))
                except ValueError as e:
                    o.error("endpoint", "'%s' %s" % (item, e))
            relays = self.relay_list(o)
            probe = o.text("probe")
            if probe is not None and not o.ip("probe", probe):
                probe = None
            own = (section, probe) if probe is not None else None
            if tunnel is None:
                o.error(None, "has no option tunnel")
                continue
            if tunnel not in managed:
                o.error("tunnel", "'%s' has no 'config tunnel' section in %s" % (tunnel, self.wfile))
                continue
            if managed[tunnel] is None:
                continue  # tunnel disabled in wgrouter
            if (key is None) == (ref is None):
                o.error(None, "needs exactly one of option public_key and option section")
                continue
            if key is not None and not is_key(key):
                o.error("public_key", "'%s' is not a WireGuard key (44 characters of base64 ending in '=')"
                        % key)
                continue
            kind = "wireguard_%s" % tunnel
            match = [s for s in self.network if s.type == kind
                     and (s.options.get("public_key") == key if key is not None else s.ref == ref)]
            if not match:
                if key is not None:
                    o.error("public_key", "'%s' is not a peer of interface '%s' in %s" % (key, tunnel, self.nfile))
                else:
                    o.error("section", "'%s' is not a %s section in %s" % (ref, kind, self.nfile))
                continue
            target = (tunnel, match[0].ref)
            if target in owner:
                o.error(None, "peer '%s' of '%s' already has extras in section '%s'"
                        % (match[0].ref, tunnel, owner[target].ref))
                continue
            owner[target] = section
            if _Options(_Report(), self.nfile, match[0]).boolean("disabled", False):
                o.warn(None, "peer '%s' of '%s' is disabled in %s" % (match[0].ref, tunnel, self.nfile))
            result[target] = (endpoints, own)
            self.relays[target] = relays
        return result

    def relay_list(self, o: _Options) -> typing.Tuple[model.Endpoint, ...]:
        """`list relay 'host:port'`: TCP relays of the peer (udp-over-tcp
        framing), in order; a name stays text, resolved when used."""
        relays = []
        for item in o.words("relay"):
            try:
                relay = parse_endpoint(item, default_port=0)
            except ValueError as e:
                o.error("relay", "'%s' %s" % (item, e))
                continue
            if relay.port == 0:
                o.error("relay", "'%s' has no port: write host:port (tcp2udp and Mullvad's relays listen on "
                        "443, 80 or 5001)" % item)
                continue
            relays.append(relay)
        return tuple(relays)

    def tunnel_interface(self, section: uci.Section, name: str) -> typing.Optional[uci.Section]:
        o = self.opts(section)
        option = "interface" if o.has("interface") else None
        iface = self.interfaces.get(name)
        if iface is None:
            o.error(option, "interface '%s' is not in %s" % (name, self.nfile))
            return None
        proto = iface.options.get("proto")
        if proto != "wireguard":
            o.error(option, "interface '%s' in %s has proto '%s', not 'wireguard'"
                    % (name, self.nfile, proto if isinstance(proto, str) else ""))
            return None
        return iface

    def tunnels(self, wans: typing.Tuple[model.Wan, ...]) -> typing.Tuple[model.Tunnel, ...]:
        managed: typing.Dict[str, typing.Optional[uci.Section]] = {}
        order = []
        for section in self.sections:
            if section.type != "tunnel":
                continue
            o = self.opts(section)
            o.known(["interface", "enabled", "probe"])
            name = o.text("interface", section.name)
            if not name:
                o.error(None, "needs a section name or option interface")
                continue
            if name in managed:
                o.error(None, "tunnel '%s' is already given" % name)
                continue
            enabled = o.boolean("enabled", True)
            relays = self.relay_list(o)
            probe = o.text("probe")
            if probe is not None and not o.ip("probe", probe):
                probe = None
            managed[name] = section if enabled else None
            if not enabled:
                continue
            iface = self.tunnel_interface(section, name)
            if iface is not None:
                order.append((name, iface, probe))
        extras = self.extras(managed)
        tunnels = []
        for name, iface, probe in order:
            n = self.netopts(iface)
            addresses = []
            for address in n.words("addresses"):
                try:
                    ipaddress.ip_interface(address)
                    addresses.append(address)
                except ValueError:
                    n.error("addresses", "'%s' is not an IP address with an optional /prefix" % address)
            listen_port = n.integer("listen_port", None, 0, 65535)
            if not n.boolean("nohostroute", False):
                was = iface.options.get("nohostroute")
                self.report.defeats.append(self.report.message(self.nfile, iface, "nohostroute", (
                    "%s: netifd pins the endpoint route of '%s' to the WAN that was up when it came up "
                    "and takes the tunnel down when that WAN goes down, which wgrouter cannot undo; "
                    "set it: uci set network.%s.nohostroute='1'; uci commit network; ifup %s "
                    "(installing wgrouter sets it)") % (
                    "is '%s', not '1'" % was if isinstance(was, str) else "is not set", name, name, name)))
            # netifd's business, not ours: only warn, and never show it
            private = iface.options.get("private_key")
            if private is None:
                n.warn("private_key", "is missing: netifd cannot bring '%s' up" % name)
            elif not isinstance(private, str) or not is_key(private):
                n.warn("private_key", "the value (not shown) is not a WireGuard key")
            peers = []
            keys: typing.Dict[str, uci.Section] = {}
            every: typing.Dict[str, typing.Tuple[typing.Tuple[str, ...], typing.Any]] = {}
            for section in self.network:
                if section.type != "wireguard_%s" % name:
                    continue
                if self.netopts(section).boolean("disabled", False):
                    continue
                endpoints, own = extras.get((name, section.ref), ([], None))
                peer = self.netifd_peer(name, section, endpoints)
                if peer is None:
                    continue
                if self.relays.get((name, section.ref)):
                    peer = dataclasses.replace(peer, relays=self.relays[(name, section.ref)])
                every[peer.section] = (peer.allowed_ips, own)
                if peer.public_key in keys:
                    self.report.error(self.nfile, section, "public_key", "'%s' is also the key of peer '%s'"
                                      % (peer.public_key, keys[peer.public_key].ref))
                    continue
                keys[peer.public_key] = section
                if not peer.endpoints:
                    self.report.warn(self.nfile, section, "endpoint_host",
                                     "is not set: the peer connects to us, wgrouter leaves it alone")
                    continue
                if peer.keepalive == 0:
                    without = [w.name for w in wans if not w.keepalive]
                    if without:
                        self.report.warn(self.nfile, section, "persistent_keepalive",
                                         "is not set: behind NAT (LTE, CGNAT) the tunnel goes quiet and "
                                         "the return path is lost on %s" % ", ".join(without))
                peers.append(peer)
            peers = [self.probe_of(peer, every, managed[name], probe) for peer in peers]
            v4 = [a.split("/")[0] for a in addresses if is_ip(a.split("/")[0], 4)]
            tunnels.append(model.Tunnel(
                name=name,
                peers=tuple(peers),
                addresses=tuple(addresses),
                listen_port=listen_port,
                probe_source=v4[0] if v4 else None,
            ))
        return tuple(tunnels)

    # -------------------------------------------------------- all

    KNOWN = ("wgrouter", "wan", "tunnel", "peer", "mqtt")

    def build(self) -> model.Config:
        for section in self.sections:
            if section.type not in self.KNOWN:
                self.report.error(self.wfile, section, None, "unknown section type '%s' (known: %s)"
                                  % (section.type, ", ".join(self.KNOWN)))
        settings = self.settings()
        wans = self.wans()
        tunnels = self.tunnels(wans)
        mqtt = self.mqtt()
        if settings.mwan3:
            for wan in wans:
                if wan.table is None:
                    self.report.warn(self.wfile, None, None, "mwan3 is on but WAN '%s' has no option table; "
                                     "host routes go to the main table" % wan.name)
        self.report.raise_errors()
        return model.Config(settings=settings, wans=wans, tunnels=tunnels, mqtt=mqtt)


def from_sections(network: typing.Sequence[uci.Section], wgrouter_sections: typing.Sequence[uci.Section],
                  network_file: str = "/" + NETWORK, wgrouter_file: str = "/" + WGROUTER,
                  usb_net: typing.Optional[typing.Callable[[str], typing.Optional[str]]] = None,
                  report: typing.Optional[_Report] = None,
                  ) -> typing.Tuple[model.Config, typing.List[str]]:
    """Build the Config from parsed sections: (config, warnings).

    ``usb_net(control_device)`` names the network device of a modem's
    control device such as /dev/cdc-wdm0 (None when unknown).
    Raises ConfigError listing every problem.
    """
    builder = _Builder(list(network), list(wgrouter_sections), network_file, wgrouter_file, usb_net)
    if report is not None:
        builder.report = report
    config = builder.build()
    return config, builder.report.warnings


def _usb_net(root: str) -> typing.Callable[[str], typing.Optional[str]]:
    def find(control: str) -> typing.Optional[str]:
        if control.startswith("/sys/"):
            # /sys/devices/.../1-1 (modemmanager): .../1-1/1-1:1.4/net/wwan0
            top = os.path.join(root, control.lstrip("/"))
            for base, dirs, _ in os.walk(top):
                dirs.sort()
                if os.path.basename(base) == "net" and dirs:
                    return dirs[0]
                if base.count(os.sep) - top.count(os.sep) >= 2:
                    dirs[:] = [d for d in dirs if d == "net"]
            return None
        name = os.path.basename(control)
        for cls in ("usbmisc", "usb", "tty"):
            path = os.path.join(root, "sys/class", cls, name, "device/net")
            try:
                names = sorted(os.listdir(path))
            except OSError:
                continue
            if names:
                return names[0]
        return None
    return find


def _read(path: str) -> typing.List[uci.Section]:
    try:
        return uci.load(path)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e.strerror or e), path) from None
    except uci.UciError as e:
        raise ConfigError(str(e), path) from None


def _load(root: str, report: typing.Optional[_Report] = None) -> typing.Tuple[model.Config, typing.List[str]]:
    network_file = os.path.join(root, NETWORK)
    wgrouter_file = os.path.join(root, WGROUTER)
    errors = []
    parsed = []
    for path in (network_file, wgrouter_file):
        try:
            parsed.append(_read(path))
        except ConfigError as e:
            errors.append(e)
    if errors:
        report = _Report()
        report.errors = errors
        report.raise_errors()
    return from_sections(parsed[0], parsed[1], network_file, wgrouter_file, _usb_net(root), report)


def load(root: str = "/") -> model.Config:
    """Read and validate <root>/etc/config/network and <root>/etc/config/wgrouter."""
    return _load(root)[0]


def check(root: str = "/") -> typing.List[str]:
    """Warnings about a valid configuration; raises ConfigError like load."""
    return _load(root)[1]


def defeats(root: str = "/") -> typing.List[str]:
    """Problems the daemon runs with but that defeat it (a managed tunnel
    netifd still pins to one WAN); raises ConfigError like load."""
    report = _Report()
    _load(root, report)
    return report.defeats
