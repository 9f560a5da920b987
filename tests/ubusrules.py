"""What the python3-ubus binding and ubusd check, shared by the binding's two
stand-ins: FakeBus (tests/fakebus.py, in the test's own process) and the lab
binding (tests/lab/standin_ubus/ubus.py, in the lab daemon's process, with
the lab bus tests/lab/standin_bus.py).

It imports nothing: the lab binding loads it into the daemon, whose memory
the idle benchmark measures.  The strictness was observed with python-ubus
0.1.3 against a real ubusd (openwrt/ubus 3cc98db, libubox 1aa36ee; see
/work/shared/OPENWRT.md).
"""

# ubus status codes (libubus ubus_msg_status)
STATUS_OK = 0
STATUS_INVALID_COMMAND = 1
STATUS_INVALID_ARGUMENT = 2
STATUS_METHOD_NOT_FOUND = 3
STATUS_NOT_FOUND = 4
STATUS_TIMEOUT = 7
STATUS_UNKNOWN_ERROR = 9

_MESSAGES = {
    STATUS_INVALID_ARGUMENT: "Invalid argument",
    STATUS_METHOD_NOT_FOUND: "Method not found",
    STATUS_NOT_FOUND: "Not found",
    STATUS_TIMEOUT: "Request timed out",
    STATUS_UNKNOWN_ERROR: "Unknown error",
}

# What add(), objects() and the like raise on a connection held after ubusd
# went away, and add() of a name already on the bus (observed).
INVALID = "ubus error occured: Invalid argument"

# libubox blobmsg.h, enum blobmsg_type (the binding's BLOBMSG_TYPE_*; its
# BOOL is INT8)
BLOBMSG_TYPE_ARRAY = 1
BLOBMSG_TYPE_TABLE = 2
BLOBMSG_TYPE_STRING = 3
BLOBMSG_TYPE_INT64 = 4
BLOBMSG_TYPE_INT32 = 5
BLOBMSG_TYPE_INT16 = 6
BLOBMSG_TYPE_INT8 = 7
BLOBMSG_TYPE_BOOL = 7
BLOBMSG_TYPE_DOUBLE = 8
BLOBMSG_TYPES = {BLOBMSG_TYPE_ARRAY, BLOBMSG_TYPE_TABLE, BLOBMSG_TYPE_STRING, BLOBMSG_TYPE_INT64,
                 BLOBMSG_TYPE_INT32, BLOBMSG_TYPE_INT16, BLOBMSG_TYPE_INT8, BLOBMSG_TYPE_DOUBLE}


class UbusStatus(RuntimeError):
    """A call failed with a ubus status code (the binding raises RuntimeError)."""

    def __init__(self, status):
        super().__init__("ubus error occured: %s" % _MESSAGES.get(status, status))
        self.status = status


def method_table(methods):
    """add()'s ``methods`` as {method: (callback, signature)}; TypeError
    where the binding refuses the declaration."""
    table = {}
    for method, spec in methods.items():
        if not isinstance(spec, dict) or set(spec) != {"method", "signature"}:
            raise TypeError("method %r needs exactly 'method' and 'signature'" % method)
        if not callable(spec["method"]) or not isinstance(spec["signature"], dict):
            raise TypeError("method %r: bad callback or signature" % method)
        for arg, type_ in spec["signature"].items():
            if not isinstance(arg, str) or type_ not in BLOBMSG_TYPES:
                raise TypeError("method %r: bad argument %r" % (method, arg))
        table[method] = (spec["method"], dict(spec["signature"]))
    return table


def _type_ok(type_, value):
    if type_ == BLOBMSG_TYPE_STRING:
        return isinstance(value, str)
    if type_ == BLOBMSG_TYPE_BOOL:
        return isinstance(value, bool)
    if type_ in (BLOBMSG_TYPE_INT32, BLOBMSG_TYPE_INT16, BLOBMSG_TYPE_INT64):
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == BLOBMSG_TYPE_DOUBLE:
        return isinstance(value, float)
    if type_ == BLOBMSG_TYPE_TABLE:
        return isinstance(value, dict)
    if type_ == BLOBMSG_TYPE_ARRAY:
        return isinstance(value, list)
    return False


def args_ok(signature, args):
    """Whether a call's arguments pass the signature: every declared one is
    there with its type, and no other (no optional arguments); otherwise the
    caller gets STATUS_INVALID_ARGUMENT and the callback is not called."""
    return set(args) == set(signature) and all(_type_ok(signature[a], v) for a, v in args.items())


def check_reply(data):
    """What ``handler.reply`` accepts: a dict only."""
    if not isinstance(data, dict):
        raise TypeError("reply must be a dict")


def check_timeout(timeout):
    """loop() takes an int of milliseconds (python-ubus ``ubus_python_loop``
    parses it with "|i": a float is refused, a bool is an int; observed)."""
    if not isinstance(timeout, int):
        raise TypeError("an integer is required (timeout in ms)")


def matches(pattern, name):
    """ubusd's match of an object path or event pattern: the name itself,
    or with one trailing ``*`` every name that starts with the rest (ubus
    ``ubusd_proto.c``, ``ubusd_handle_lookup``; ``ubusd_event.c``,
    ``ubusd_alloc_event_pattern`` and ``ubusd_send_event``)."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern
