"""tests/fakebus.py itself: FakeBus holds to the python-ubus binding's
strictness and to what the binding does once ubusd is gone, and Uhttpd
answers as uhttpd's ubus plugin does; no wgrouter object on the bus."""

import os

import pytest

from tests import fakebus
from tests.test_ubusobj import LUCI, bus, rpc_call, shell, ubusd, uhttpd  # noqa: F401 (bus, ubusd: the fixtures)


def test_callback_exception_is_unknown_error_for_caller(bus, ubusd):
    def broken(handler, data):
        raise KeyError("boom")
    bus.connect(socket_path=ubusd.path)
    bus.add("broken", {"ping": {"method": broken, "signature": {}}})
    with pytest.raises(RuntimeError) as e:
        shell(ubusd).call("broken", "ping", {})
    assert e.value.status == fakebus.STATUS_UNKNOWN_ERROR
    assert isinstance(bus.callback_errors[0], KeyError)


def test_callback_without_reply_is_empty_success(bus, ubusd):
    bus.connect(socket_path=ubusd.path)
    bus.add("silent", {"ping": {"method": lambda handler, data: None, "signature": {}}})
    assert shell(ubusd).call("silent", "ping", {}) == []


def test_fakebus_strictness(bus, ubusd):
    with pytest.raises(RuntimeError):
        bus.disconnect()  # not connected
    with pytest.raises(TypeError):
        bus.connect(socket_path=None)  # "|s" in the binding
    with pytest.raises(IOError, match="Failed to connect to the ubus socket"):
        bus.connect(socket_path=ubusd.path + ".nothing")
    bus.connect(socket_path=ubusd.path)
    with pytest.raises(RuntimeError):
        bus.connect(socket_path=ubusd.path)  # twice
    with pytest.raises(TypeError):
        bus.loop(0.5)  # ms, an int
    with pytest.raises(TypeError):
        bus.add("x", {"m": {"method": print}})  # no signature
    bus.disconnect()
    assert not bus.get_connected()


def test_fakebus_after_ubusd_went_away_behaves_like_the_binding(bus, ubusd):
    """The observation (OPENWRT.md, "After ubusd goes away") as FakeBus has it."""
    import time
    bus.connect(socket_path=ubusd.path)
    bus.add("t1", {"status": {"method": lambda h, d: h.reply({}), "signature": {}}})
    ubusd.stop()
    assert not os.path.exists(ubusd.path)  # a clean stop removes the socket
    started = time.monotonic()
    bus.loop(30)
    assert time.monotonic() - started >= 0.03  # the whole timeout, not an early return
    assert bus.send("x.y", {"a": 1}) is False
    for call in (bus.objects, lambda: bus.add("t3", {})):
        with pytest.raises(RuntimeError, match=r"^ubus error occured: Invalid argument$"):
            call()
    assert bus.get_connected()
    bus.disconnect()
    ubusd.start()
    bus.connect(socket_path=ubusd.path)
    ubusd.kill()
    assert os.path.exists(ubusd.path)  # SIGKILL leaves the socket behind


def test_uhttpd_without_the_daemon_says_object_not_found(ubusd):
    web = uhttpd(ubusd)
    sid = web.login(write=["luci-app-wgrouter"])
    assert rpc_call(web, sid, LUCI, "status", {})["error"]["code"] == fakebus.RPC_OBJECT_NOT_FOUND


def test_event_not_looped_back_to_its_sender(bus, ubusd):
    """ubusd sends an event to every matching listener but the sender's own
    connection (ubusd_event.c, ubusd_send_event_msg; observed with 0.1.3)."""
    got = []
    bus.connect(socket_path=ubusd.path)
    bus.listen(("x.*", lambda e, d: got.append(("own", e))))
    other = fakebus.FakeBus(ubusd)
    other.connect(socket_path=ubusd.path)
    other.listen(("x.y", lambda e, d: got.append(("other", e))))
    assert bus.send("x.y", {}) is True
    assert got == [("other", "x.y")]
    other.disconnect()
