"""Where the daemon's news goes: ubus and MQTT, behind one small interface.

A sink takes ``transition(data)`` (one transition, as the ubus event and
the MQTT event payload carry it), ``state(snapshot, wall)`` (the status
after a step, or on its own timer: ``wake_at(wall)``) and ``stop()``.
The loop calls them without knowing which sinks exist.

MQTT is started off the loop: importing paho and building its client took
over 40 s on a slow file system (a QEMU guest under TCG), and the loop must
go on reacting meanwhile.  ``MqttStarter`` does that in a thread, keeps the
transitions of the meantime (bounded by ``queue_max``, the oldest dropped,
as the telemetry's own queue does) and hands the ready sink to the loop
through the daemon's wake socket.
"""

import collections
import threading


class Sink:
    """The interface; every method does nothing here."""

    # whether ``state`` does anything: the loop builds a step's snapshot only
    # when a sink or a status request needs it
    takes_state = False

    def transition(self, data):
        pass

    def state(self, snapshot, wall):
        pass

    def wake_at(self, wall):
        """Unix time at which ``state`` wants to be called again, or None."""
        return None

    def stop(self):
        pass


class UbusSink(Sink):
    # Transitions as ubus events (``wgrouter.transition``).  The state is
    # sent by the ubus service itself, when it (re)registers.
    def __init__(self, service, log):
        self.service = service
        self.log = log

    def transition(self, data):
        try:
            self.service.send_event("transition", data)
        except Exception as e:
            self.log("ubus: event not sent: %s" % e)

    def stop(self):
        self.service.stop()


class MqttSink(Sink):
    # A running ``mqtt.Telemetry``: retained tunnel states, events and the
    # heartbeat, timed on the wall clock.
    takes_state = True

    def __init__(self, telemetry):
        self.telemetry = telemetry

    def transition(self, data):
        self.telemetry.publish_event(data)

    def state(self, snapshot, wall):
        if wall >= self.telemetry.heartbeat_due(wall):
            self.telemetry.heartbeat(wall, snapshot)
        else:
            self.telemetry.publish_state(snapshot)

    def wake_at(self, wall):
        return self.telemetry.heartbeat_due(wall)

    def stop(self):
        self.telemetry.stop()


def make_telemetry(settings, identity, log):
    """The started Telemetry, or the line that says why there is none."""
    try:
        from wgrouter import mqtt
    except ImportError as e:
        return None, "mqtt: enabled in /etc/config/wgrouter but not installed (%s)" % e
    try:
        telemetry = mqtt.Telemetry(settings, identity, log=log)
        telemetry.start()
    except Exception as e:  # wgrouter.Error, or a broken paho: run without MQTT
        return None, "mqtt: telemetry off: %s" % e
    return telemetry, None


class MqttStarter(Sink):
    # A sink while MQTT starts in a thread: keeps the transitions (at most
    # ``settings.queue_max``, the oldest dropped) for the real sink.
    #
    # ``notify()`` is called from the thread when it is done (the daemon
    # writes to its wake socket); the loop then calls ``take()``.
    def __init__(self, settings, identity, log, notify, make=make_telemetry):
        self.log = log
        self.kept = collections.deque(maxlen=max(1, settings.queue_max))
        self.dropped = 0
        self._done = None  # (telemetry or None, error or None) once the thread ends
        self._stopped = False
        self._taken = False
        self._lock = threading.Lock()
        self._notify = notify
        self._thread = threading.Thread(target=self._run, args=(settings, identity, make),
                                        name="wgrouter-mqtt-start", daemon=True)
        self._thread.start()

    def _run(self, settings, identity, make):
        try:
            done = make(settings, identity, self.log)
        except Exception as e:  # a report, never a thread dying silently
            done = (None, "mqtt: telemetry off: %s" % e)
        with self._lock:
            self._done = done
            stopped = self._stopped
        if stopped and done[0] is not None:
            done[0].stop()  # replaced or stopped meanwhile: say "offline" and go
            return
        self._notify()

    def transition(self, data):
        if len(self.kept) == self.kept.maxlen:
            self.dropped += 1
        self.kept.append(data)

    def take(self):
        """None while starting; else (MqttSink or None, error line or None),
        with the kept transitions handed to the new sink."""
        with self._lock:
            done = self._done
            if done is None:
                return None
            self._taken = True
        telemetry, error = done
        if telemetry is None:
            return None, error
        sink = MqttSink(telemetry)
        for data in self.kept:
            sink.transition(data)
        self.kept.clear()
        return sink, None

    def stop(self):
        """Not wanted any more: a telemetry still starting is stopped by its
        thread once built, one already built here (and not taken)."""
        with self._lock:
            self._stopped = True
            done = None if self._taken else self._done
        if done is not None and done[0] is not None:
            done[0].stop()
