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
- ``loop(timeout)`` takes an int of milliseconds;
- an event reaches the listeners of other connections, not the sender's;
- object paths and event patterns match as ubusd matches them (a name, or
  a prefix with one trailing ``*``);
- after ubusd goes away (``Ubusd.stop()``, ``Ubusd.kill()``, ``restart()``),
  the connection still held behaves as observed with python-ubus 0.1.3,
  ubus 3cc98db and libubox 1aa36ee (OPENWRT.md, "After ubusd goes away"):
  ``loop(1000)`` takes its whole timeout every turn and serves nothing,
  ``send()`` returns False, ``objects()`` and ``add()`` raise
  ``RuntimeError('ubus error occured: Invalid argument')``, ``call()``
  raises "Object ... was not found.", ``get_connected()`` stays True and
  ``disconnect()`` works.

``Ubusd(path)`` binds a real unix socket at ``path``: ubusd unlinks its
socket and binds a new one when it starts, and unlinks it when it stops
cleanly (ubus ``ubusd_main.c``, ``main``); a SIGKILLed ubusd leaves it
behind (observed).  ``connect(socket_path=...)`` to a path no running Ubusd
serves fails as the binding does.  Every new client gets a greeting at once
(ubusd sends HELLO, ubus ``ubusd_proto.c``, ``ubusd_send_hello``), except
from a frozen Ubusd (``freeze()``: stopped or hung, its socket still
listening), where ``connect()`` waits as libubus's blocking read of the
HELLO does.

``Uhttpd`` is the way LuCI reaches the bus: uhttpd's /ubus JSON-RPC handler
with rpcd's session ACL (see the class).

Calls made from another thread while a thread sits in ``loop()`` are handed
to that thread, so handlers run where they would run with the real binding.
Without a looping thread a call is served inline.

``check_reply(method, reply)`` and ``check_event(name, data)`` check data
against tests/ubus_contract.json; they work on replies of the real daemon too.

The checks of the binding and of ubusd are in tests/ubusrules.py, which the
lab's binding stand-in (tests/lab/standin_ubus) applies too.
"""

import fnmatch
import json
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import weakref

from tests import ubusrules
# the status codes and the error, as the tests know them from here
from tests.ubusrules import (STATUS_INVALID_ARGUMENT, STATUS_INVALID_COMMAND,  # noqa: F401
                             STATUS_METHOD_NOT_FOUND, STATUS_NOT_FOUND, STATUS_OK, STATUS_TIMEOUT,
                             STATUS_UNKNOWN_ERROR, UbusStatus)

CONTRACT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ubus_contract.json")

_UNSET = object()
_WAKE = object()


DEFAULT_SOCKET = "/var/run/ubus/ubus.sock"


class Ubusd:
    """The bus: object names shared by every FakeBus connected to it.

    Its socket is a real file at ``path`` (by default in a directory of its
    own, removed with the Ubusd), so that a client can stat it.
    """

    def __init__(self, names=(), path=None):
        self.names = tuple(names)  # held by other processes (procd, netifd...)
        if path is None:
            tmp = tempfile.mkdtemp(prefix="fakeubusd-")
            weakref.finalize(self, shutil.rmtree, tmp, True)
            path = os.path.join(tmp, "ubus.sock")
        self.path = path
        self.connections = []  # FakeBus instances connected to this ubusd
        self._sock = None
        self.up = False
        # A stuck ubusd (stopped with SIGSTOP, or hung) still has its socket
        # listening: connect() succeeds, nobody accepts, no HELLO comes.
        self.stuck = threading.Event()
        self.unstuck = threading.Event()
        self.start()

    def start(self):
        """ubusd starts: unlink the old socket, bind a new one, empty bus."""
        try:
            os.unlink(self.path)  # ubusd_main.c: unlink(ubus_socket)
        except FileNotFoundError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        threading.Thread(target=self._greet, args=(self._sock,), daemon=True).start()
        self.objects = {name: None for name in self.names}  # name -> owning FakeBus
        self.listeners = []  # (pattern, callback, owner)
        self.up = True

    def _greet(self, sock):
        """Every new client gets HELLO at once (ubusd_proto.c, ubusd_send_hello);
        a stuck ubusd accepts nobody."""
        while True:
            try:
                client, _ = sock.accept()
            except OSError:  # closed: this ubusd is gone
                return
            if self.stuck.is_set():
                self.unstuck.wait()
            with client:
                try:
                    client.sendall(b"\0")  # the header's first byte
                except OSError:
                    pass

    def freeze(self):
        """ubusd stops answering (SIGSTOP): its socket stays and listens."""
        self.unstuck.clear()
        self.stuck.set()

    def thaw(self):
        self.stuck.clear()
        self.unstuck.set()

    def _drop_clients(self):
        self.up = False
        for bus in list(self.connections):
            bus._lost = True
            bus._queue.put(_WAKE)
        self.connections = []
        self.objects = {}
        self.listeners = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stop(self):
        """ubusd exits cleanly (SIGTERM): it unlinks its socket."""
        self._drop_clients()
        try:
            os.unlink(self.path)  # ubusd_main.c: after uloop_run()
        except FileNotFoundError:
            pass

    def kill(self):
        """ubusd is SIGKILLed: its socket file stays (observed)."""
        self._drop_clients()

    def restart(self):
        """procd restarts ubusd: stop, then a new one binds a new socket.

        A real restart takes a while (procd respawns the process); the pause
        also keeps a file system from handing the new socket both the inode
        number and the change time of the one just unlinked.
        """
        self.stop()
        time.sleep(RESTART_PAUSE)
        self.start()


RESTART_PAUSE = 0.05  # s


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
        ubusrules.check_reply(data)
        # the binding turns the dict into blobmsg through JSON
        self._request.replies.append(json.loads(json.dumps(data)))


class FakeBus:
    """Stand-in for the ``ubus`` module (one connection, like the binding)."""

    # the binding's BLOBMSG_TYPE_* constants: set from tests/ubusrules.py below the class

    def __init__(self, ubusd=None, call_timeout=5.0, default_socket=DEFAULT_SOCKET):
        self.ubusd = ubusd if ubusd is not None else Ubusd()
        # the binding's default: UBUS_UNIX_SOCKET when it was built (ubus_python.c)
        self.default_socket = default_socket
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
        path = socket_path or self.default_socket
        if path == self.ubusd.path and self.ubusd.stuck.is_set():
            # libubus reads ubusd's HELLO with a blocking read (libubus-io.c,
            # ubus_reconnect); the real binding holds the GIL meanwhile, which
            # a stand-in cannot do: here only this thread waits
            self.ubusd.unstuck.wait()
        if not self.ubusd.up or path != self.ubusd.path:
            # the binding's message ends with a newline (ubus_python.c)
            raise IOError("Failed to connect to the ubus socket '%s'\n" % path)
        self._socket_path = path
        self._connected = True
        self._lost = False
        self.ubusd.connections.append(self)
        return True

    def disconnect(self, deregister=True):
        self._require_connected()
        if not self._lost:
            for name in list(self._methods):
                self.ubusd.objects.pop(name, None)
            self.ubusd.listeners = [x for x in self.ubusd.listeners if x[2] is not self]
            if self in self.ubusd.connections:
                self.ubusd.connections.remove(self)
        self._methods.clear()
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
            # observed: objects() and add() on the connection held after
            # ubusd went away
            raise RuntimeError("ubus error occured: Invalid argument")

    # --------------------------------------------------------- objects

    def add(self, name, methods):
        self._require_alive()
        if not isinstance(name, str) or not isinstance(methods, dict):
            raise TypeError("add(name: str, methods: dict)")
        table = ubusrules.method_table(methods)
        if name in self.ubusd.objects:
            raise RuntimeError("ubus error occured: Invalid argument")
        self.ubusd.objects[name] = self
        self._methods[name] = table
        return True

    def objects(self, path="*"):
        self._require_alive()
        found = {}
        for name, owner in self.ubusd.objects.items():
            if ubusrules.matches(path, name):
                table = owner._methods.get(name, {}) if owner is not None else {}
                found[name] = {m: dict(sig) for m, (_, sig) in table.items()}
        return found

    # ----------------------------------------------------------- calls

    def call(self, obj, method, arguments, timeout=0):
        """Call like `ubus call OBJ METHOD ARGS`; returns the list of replies."""
        self._require_connected()
        if self._lost:  # observed after ubusd went away
            raise RuntimeError("Object '%s' was not found." % obj)
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
            if not ubusrules.args_ok(signature, args):
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
        self._require_connected()
        if not isinstance(event, str) or not isinstance(data, dict):
            raise TypeError("send(event: str, data: dict)")
        if self._lost:
            return False  # observed: no exception after ubusd went away
        data = json.loads(json.dumps(data))
        self.sent.append((event, data))
        for pattern, callback, owner in list(self.ubusd.listeners):
            # ubusd does not loop an event back to its sender (ubusd_event.c,
            # ubusd_send_event_msg; observed)
            if owner is not self and ubusrules.matches(pattern, event):
                callback(event, data)
        return True

    def listen(self, *listeners):
        self._require_connected()
        for pattern, callback in listeners:
            self.ubusd.listeners.append((pattern, callback, self))

    # ------------------------------------------------------------ loop

    def loop(self, timeout=-1):
        """Serve calls until ``timeout`` ms have passed (like python-ubus).

        After the connection is lost it still takes the whole timeout and
        serves nothing: observed with the real binding, ``loop(1000)`` took
        1.000 s every turn after ubusd was stopped or SIGKILLed, whether
        ubusd went away during a turn or between two.
        """
        self._require_connected()
        ubusrules.check_timeout(timeout)
        self.loop_calls += 1
        self._looping = threading.get_ident()
        deadline = None if timeout < 0 else time.monotonic() + timeout / 1000.0
        try:
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                try:
                    request = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
                if request is _WAKE:
                    continue
                if self._lost:  # nothing reaches a dead connection
                    request.error = UbusStatus(STATUS_NOT_FOUND)
                    request.done.set()
                    continue
                self._serve(request)
        finally:
            self._looping = None
        return None

    def lose_connection(self):
        """This connection's ubusd went away (see Ubusd.stop, kill, restart)."""
        self.ubusd.kill()


for _name in dir(ubusrules):
    if _name.startswith("BLOBMSG_TYPE_"):
        setattr(FakeBus, _name, getattr(ubusrules, _name))


# ------------------------------------------------------------ uhttpd

# JSON-RPC errors of uhttpd's /ubus handler (uhttpd ubus.c, json_errors)
RPC_INVALID_REQUEST = -32600
RPC_INVALID_PARAMS = -32602
RPC_OBJECT_NOT_FOUND = -32000
RPC_ACCESS_DENIED = -32002
RPC_TIMEOUT = -32003

_RPC_MESSAGES = {
    RPC_INVALID_REQUEST: "Invalid request",
    RPC_INVALID_PARAMS: "Invalid parameters",
    RPC_OBJECT_NOT_FOUND: "Object not found",
    RPC_ACCESS_DENIED: "Access denied",
    RPC_TIMEOUT: "ubus request timed out",
}

SESSION_ARG = "ubus_rpc_session"


class Uhttpd:
    """How a LuCI page reaches the bus: uhttpd's /ubus JSON-RPC handler and
    rpcd's session ACL, as LuCI's rpc.js uses them (the "call" method).

    Rules, each from the source named:
    - a session gets, per access group of the rpcd ACL files, the ubus
      grants of the group's "read" part if the login has read permission,
      and of its "write" part if it has write; write implies read (rpcd
      session.c, rpc_login_setup_acl_file, rpc_login_test_permission);
    - object and method are matched with fnmatch (session.c,
      rpc_session_acl_allowed);
    - a call names ``[sid, object, method, args]``; an object not on the bus
      is -32000 "Object not found", looked up before the ACL is asked;
      a call the session may not make is -32002 "Access denied"
      (uhttpd ubus.c, uh_ubus_handle_request_object);
    - an argument named ``ubus_rpc_session`` from the client is -32602, and
      every forwarded call gets ``ubus_rpc_session: sid`` added to its
      arguments (ubus.c, uh_ubus_send_request; LuCI's ucode proxy does the
      same, luci-base ucode/controller/admin/index.uc: arg.ubus_rpc_session
      = sid);
    - the answer of a "call" is ``result: [status]`` or ``[status, data]``,
      the ubus status first, the data only if the reply had some (ubus.c,
      uh_ubus_request_cb, the legacy "call" format LuCI uses).
    """

    def __init__(self, ubusd, acl_files):
        self.bus = FakeBus(ubusd)
        self.bus.connect(socket_path=ubusd.path)
        self.acl = {}
        for path in acl_files:
            with open(path) as f:
                self.acl.update(json.load(f))
        self.sessions = {}
        self.calls = []  # (object, method, args as forwarded)

    def login(self, read=(), write=()):
        """A session whose login grants these access groups; returns its id."""
        grants = []
        for group, spec in self.acl.items():
            levels = []
            if group in read or group in write:
                levels.append("read")
            if group in write:
                levels.append("write")
            for level in levels:
                for obj, methods in spec.get(level, {}).get("ubus", {}).items():
                    grants.extend((obj, m) for m in methods)
        sid = "%032x" % (len(self.sessions) + 1)
        self.sessions[sid] = {"grants": grants, "read": set(read) | set(write),
                              "write": set(write)}
        return sid

    def allowed(self, sid, obj, method):
        session = self.sessions.get(sid)
        if session is None:
            return False
        return any(fnmatch.fnmatchcase(obj, o) and fnmatch.fnmatchcase(method, m)
                   for o, m in session["grants"])

    def _error(self, request_id, code):
        return {"jsonrpc": "2.0", "id": request_id,
                "error": {"code": code, "message": _RPC_MESSAGES[code]}}

    def post(self, request):
        """One JSON-RPC request as rpc.js posts it; returns the JSON answer."""
        request = json.loads(json.dumps(request))
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" \
                or request.get("method") != "call":
            return self._error(rid, RPC_INVALID_REQUEST)
        params = request.get("params")
        if not isinstance(params, list) or len(params) != 4 or not isinstance(params[3], dict):
            return self._error(rid, RPC_INVALID_REQUEST)
        sid, obj, method, args = params
        if obj not in self.bus.objects(obj):
            return self._error(rid, RPC_OBJECT_NOT_FOUND)
        if not self.allowed(sid, obj, method):
            return self._error(rid, RPC_ACCESS_DENIED)
        if SESSION_ARG in args:
            return self._error(rid, RPC_INVALID_PARAMS)
        args = dict(args, **{SESSION_ARG: sid})
        self.calls.append((obj, method, args))
        try:
            replies = self.bus.call(obj, method, args)
        except UbusStatus as e:
            if e.status == STATUS_TIMEOUT:
                return self._error(rid, RPC_TIMEOUT)
            return {"jsonrpc": "2.0", "id": rid, "result": [e.status]}
        except RuntimeError:  # gone between the lookup and the call
            return {"jsonrpc": "2.0", "id": rid, "result": [STATUS_NOT_FOUND]}
        data = {}
        for reply in replies:
            data.update(reply)
        result = [STATUS_OK, data] if data else [STATUS_OK]
        return {"jsonrpc": "2.0", "id": rid, "result": result}


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
