"""FakeBus: a test stand-in for the python3-ubus binding, and contract checks.

The real binding needs libubus and ubusd, which CI cannot have.  FakeBus has
the same module-level API (``connect``, ``disconnect``, ``get_connected``,
``get_socket_path``, ``add``, ``objects``, ``call``, ``send``, ``listen``,
``loop``, ``BLOBMSG_TYPE_*``) and the strictness observed with python-ubus
0.1.3 against a real ubusd (see /work/shared/OPENWRT.md):

- every declared argument is required and type-checked, undeclared ones are
  refused, and the callback is then never called ("Invalid argument",
  ubus status 2);
- a callback that never replies gives an empty, successful answer;
- ``add`` of a name already on the bus raises
  ``RuntimeError("ubus error occured: Invalid argument")``;
- connecting twice or disconnecting twice raises;
- ``loop(timeout)`` takes an int of milliseconds.

Calls made from another thread while a thread sits in ``loop()`` are handed
to that thread, so handlers run where they would run with the real binding.
Without a looping thread a call is served inline.

``check_reply(method, reply)`` and ``check_event(name, data)`` check data
against tests/ubus_contract.json; they work on replies of the real daemon too.
"""

import fnmatch
import json
import os
import queue
import threading
import time

CONTRACT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ubus_contract.json")

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


_UNSET = object()
_WAKE = object()


class UbusStatus(RuntimeError):
    """A call failed with a ubus status code (the binding raises RuntimeError)."""

    def __init__(self, status):
        super().__init__("ubus error occured: %s" % _MESSAGES.get(status, status))
        self.status = status


class Ubusd:
    """The bus: object names shared by every FakeBus connected to it."""

    def __init__(self, names=()):
        self.objects = {name: None for name in names}  # name -> owning FakeBus
        self.listeners = []  # (pattern, callback, owner)
        self.up = True


class _Request:
    def __init__(self, obj, method, args):
        self.obj, self.method, self.args = obj, method, args
        self.replies = []
        self.error = None
        self.done = threading.Event()


class _Handler:
    """What a method callback gets as ``handler``."""

    def __init__(self, request):
        self._request = request

    def reply(self, data):
        if not isinstance(data, dict):
            raise TypeError("reply must be a dict")
        # the binding turns the dict into blobmsg through JSON
        self._request.replies.append(json.loads(json.dumps(data)))


class FakeBus:
    """Stand-in for the ``ubus`` module (one connection, like the binding)."""

    BLOBMSG_TYPE_ARRAY = 1
    BLOBMSG_TYPE_TABLE = 2
    BLOBMSG_TYPE_STRING = 3
    BLOBMSG_TYPE_INT64 = 4
    BLOBMSG_TYPE_INT32 = 5
    BLOBMSG_TYPE_INT16 = 6
    BLOBMSG_TYPE_INT8 = 7
    BLOBMSG_TYPE_BOOL = 7
    BLOBMSG_TYPE_DOUBLE = 8

    def __init__(self, ubusd=None, call_timeout=5.0):
        self.ubusd = ubusd if ubusd is not None else Ubusd()
        self.call_timeout = call_timeout
        self._socket_path = None
        self._connected = False
        self._methods = {}  # object name -> {method: (callback, signature)}
        self._queue = queue.Queue()
        self._looping = None  # thread ident inside loop()
        self.sent = []  # (event, data) this connection sent
        self.handler_threads = []  # thread idents that ran callbacks
        self.callback_errors = []  # exceptions raised by callbacks
        self.loop_calls = 0
        self._lost = False  # see lose_connection()

    # ------------------------------------------------------ connection

    def connect(self, socket_path=_UNSET):
        if socket_path is _UNSET:
            socket_path = None
        elif not isinstance(socket_path, str):
            # the binding parses it with "|s": None is refused too
            raise TypeError("connect() argument 'socket_path' must be str")
        if self._connected:
            raise RuntimeError("You are already connected to ubus.")
        if not self.ubusd.up:
            raise IOError("Failed to connect to the ubus socket '%s'" % (
                socket_path or "/var/run/ubus/ubus.sock"))
        self._socket_path = socket_path or "/var/run/ubus/ubus.sock"
        self._connected = True
        return True

    def disconnect(self, deregister=True):
        self._require_connected()
        for name in list(self._methods):
            self.ubusd.objects.pop(name, None)
        self._methods.clear()
        self.ubusd.listeners = [x for x in self.ubusd.listeners if x[2] is not self]
        self._connected = False
        self._lost = False

    def get_connected(self):
        return self._connected

    def get_socket_path(self):
        return self._socket_path if self._connected else None

    def _require_connected(self):
        if not self._connected:
            raise RuntimeError("You are not connected to ubus.")

    def _require_alive(self):
        self._require_connected()
        if self._lost:
            raise RuntimeError("ubus error occured: Connection failed")

    # --------------------------------------------------------- objects

    def _type_ok(self, type_, value):
        if type_ == self.BLOBMSG_TYPE_STRING:
            return isinstance(value, str)
        if type_ == self.BLOBMSG_TYPE_BOOL:
            return isinstance(value, bool)
        if type_ in (self.BLOBMSG_TYPE_INT32, self.BLOBMSG_TYPE_INT16, self.BLOBMSG_TYPE_INT64):
            return isinstance(value, int) and not isinstance(value, bool)
        if type_ == self.BLOBMSG_TYPE_DOUBLE:
            return isinstance(value, float)
        if type_ == self.BLOBMSG_TYPE_TABLE:
            return isinstance(value, dict)
        if type_ == self.BLOBMSG_TYPE_ARRAY:
            return isinstance(value, list)
        return False

    def add(self, name, methods):
        self._require_alive()
        if not isinstance(name, str) or not isinstance(methods, dict):
            raise TypeError("add(name: str, methods: dict)")
        valid_types = {self.BLOBMSG_TYPE_ARRAY, self.BLOBMSG_TYPE_TABLE, self.BLOBMSG_TYPE_STRING,
                       self.BLOBMSG_TYPE_INT64, self.BLOBMSG_TYPE_INT32, self.BLOBMSG_TYPE_INT16,
                       self.BLOBMSG_TYPE_INT8, self.BLOBMSG_TYPE_DOUBLE}
        table = {}
        for method, spec in methods.items():
            if not isinstance(spec, dict) or set(spec) != {"method", "signature"}:
                raise TypeError("method %r needs exactly 'method' and 'signature'" % method)
            if not callable(spec["method"]) or not isinstance(spec["signature"], dict):
                raise TypeError("method %r: bad callback or signature" % method)
            for arg, type_ in spec["signature"].items():
                if not isinstance(arg, str) or type_ not in valid_types:
                    raise TypeError("method %r: bad argument %r" % (method, arg))
            table[method] = (spec["method"], dict(spec["signature"]))
        if name in self.ubusd.objects:
            raise RuntimeError("ubus error occured: Invalid argument")
        self.ubusd.objects[name] = self
        self._methods[name] = table
        return True

    def objects(self, path="*"):
        self._require_alive()
        found = {}
        for name, owner in self.ubusd.objects.items():
            if fnmatch.fnmatchcase(name, path):
                table = owner._methods.get(name, {}) if owner is not None else {}
                found[name] = {m: dict(sig) for m, (_, sig) in table.items()}
        return found

    # ----------------------------------------------------------- calls

    def call(self, obj, method, arguments, timeout=0):
        """Call like `ubus call OBJ METHOD ARGS`; returns the list of replies."""
        self._require_alive()
        if not isinstance(arguments, dict):
            raise TypeError("arguments must be a dict")
        owner = self.ubusd.objects.get(obj)
        if owner is None:
            raise RuntimeError("Object '%s' was not found." % obj)
        request = _Request(obj, method, json.loads(json.dumps(arguments)))
        looping = owner._looping
        if looping is not None and looping != threading.get_ident():
            owner._queue.put(request)
            if not request.done.wait(self.call_timeout):
                raise UbusStatus(STATUS_TIMEOUT)
        else:
            owner._serve(request)
        if request.error is not None:
            raise request.error
        return request.replies

    def _serve(self, request):
        try:
            table = self._methods.get(request.obj)
            if table is None:
                raise UbusStatus(STATUS_NOT_FOUND)
            if request.method not in table:
                raise UbusStatus(STATUS_METHOD_NOT_FOUND)
            callback, signature = table[request.method]
            args = request.args
            if set(args) != set(signature) or not all(
                    self._type_ok(signature[a], v) for a, v in args.items()):
                raise UbusStatus(STATUS_INVALID_ARGUMENT)
            self.handler_threads.append(threading.get_ident())
            try:
                callback(_Handler(request), args)
            except Exception as e:  # the binding prints it; the caller sees status 9
                self.callback_errors.append(e)
                raise UbusStatus(STATUS_UNKNOWN_ERROR)
        except UbusStatus as e:
            request.error = e
        finally:
            request.done.set()

    # ---------------------------------------------------------- events

    def send(self, event, data):
        self._require_alive()
        if not isinstance(event, str) or not isinstance(data, dict):
            raise TypeError("send(event: str, data: dict)")
        data = json.loads(json.dumps(data))
        self.sent.append((event, data))
        for pattern, callback, _ in list(self.ubusd.listeners):
            if fnmatch.fnmatchcase(event, pattern):
                callback(event, data)
        return True

    def listen(self, *listeners):
        self._require_connected()
        for pattern, callback in listeners:
            self.ubusd.listeners.append((pattern, callback, self))

    # ------------------------------------------------------------ loop

    def loop(self, timeout=-1):
        """Serve calls until ``timeout`` ms have passed (like python-ubus).

        After lose_connection() it returns at once, every time, as uloop does
        when libubus's default connection_lost handler ends it.
        """
        self._require_connected()
        if not isinstance(timeout, int) or isinstance(timeout, bool):
            raise TypeError("an integer is required (timeout in ms)")
        self.loop_calls += 1
        if self._lost:
            return None
        self._looping = threading.get_ident()
        deadline = None if timeout < 0 else time.monotonic() + timeout / 1000.0
        try:
            while not self._lost:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                try:
                    request = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
                if request is _WAKE:
                    continue
                self._serve(request)
        finally:
            self._looping = None
        return None

    def lose_connection(self):
        """ubusd went away: objects vanish, loop() returns at once, lookups fail."""
        self._lost = True
        for name in list(self._methods):
            self.ubusd.objects.pop(name, None)
        self._queue.put(_WAKE)


# ------------------------------------------------------------ contract

def load_contract():
    with open(CONTRACT_PATH) as f:
        return json.load(f)


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


class ContractError(AssertionError):
    """data does not match tests/ubus_contract.json"""


def check(schema, value, where="reply", schemas=None):
    """Raise ContractError unless ``value`` matches ``schema``."""
    if schemas is None:
        schemas = load_contract()["schemas"]
    if isinstance(schema, str) and schema in schemas:
        return check(schemas[schema], value, where, schemas)
    if isinstance(schema, (str, list)):
        names = [schema] if isinstance(schema, str) else schema
        if not any(_JSON_TYPES[n](value) for n in names):
            raise ContractError("%s: expected %s, got %r" % (where, "|".join(names), value))
        return
    container = list if "items" in schema else dict
    if not isinstance(value, container):
        raise ContractError("%s: expected %s, got %r" % (
            where, "array" if container is list else "object", value))
    if "map" in schema:
        for k, v in value.items():
            check(schema["map"], v, "%s.%s" % (where, k), schemas)
    elif "items" in schema:
        for i, v in enumerate(value):
            check(schema["items"], v, "%s[%d]" % (where, i), schemas)
    else:
        required, optional = schema.get("keys", {}), schema.get("optional", {})
        missing = sorted(set(required) - set(value))
        if missing:
            raise ContractError("%s: missing %s" % (where, ", ".join(missing)))
        extra = sorted(set(value) - set(required) - set(optional))
        if extra and not schema.get("extra"):
            raise ContractError("%s: unexpected %s" % (where, ", ".join(extra)))
        for k, v in value.items():
            if k in required:
                check(required[k], v, "%s.%s" % (where, k), schemas)
            elif k in optional:
                check(optional[k], v, "%s.%s" % (where, k), schemas)


def check_reply(method, reply):
    """Raise ContractError unless ``reply`` is a valid answer to ``method``."""
    contract = load_contract()
    if method not in contract["methods"]:
        raise ContractError("method %r is not in the contract" % method)
    if isinstance(reply, dict) and "error" in reply:
        return check(contract["error_reply"], reply, method, contract["schemas"])
    return check(contract["methods"][method]["reply"], reply, method, contract["schemas"])


def check_event(name, data):
    """Raise ContractError unless ``data`` is a valid ``name`` event."""
    contract = load_contract()
    if name not in contract["events"]:
        raise ContractError("event %r is not in the contract" % name)
    return check(contract["events"][name], data, name, contract["schemas"])
