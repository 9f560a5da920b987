"""Fleet check: many routers' telemetry through one broker, nothing lost.

    python3 -m bench.fleet --routers 200 --seconds 10 [--port P]

Runs N ``wgrouter.mqtt.Telemetry`` instances (the real publishing code, one
paho client each, distinct identities) in this process.  Each router has two
tunnels of two peers and goes through failovers, recoveries and failbacks at
a compressed rate (a transition every ROUTER_PERIOD s on average instead of
every few hours), with a heartbeat every HEARTBEAT s.  An independent
``mosquitto_sub`` counts what the broker delivers, per router.  Without
--port a private mosquitto is started on a free loopback port.

Prints and returns {"routers", "published", "received", "lost", "msgs_per_s", ...};
"published" counts the messages the broker acknowledged.  Exit status 1 if
anything was lost.
"""

import argparse
import json
import random
import sys
import time

import wgrouter.model
import wgrouter.mqtt
from tests import mosquitto

ROUTER_PERIOD = 1.0  # s, mean time between two transitions of one router
HEARTBEAT = 2.0  # s between heartbeats of one router
CONNECT_WAIT = 30.0  # s, all routers must be connected by then
SETTLE = 15.0  # s to wait for the subscriber to receive everything
PREFIX = "fleetbench"

# One step of a peer's life: (was, now, kind, wan after).
STEPS = (
    ("up", "suspect", "state", None),
    ("suspect", "recovering", "recovery", None),
    ("recovering", "up", "failover", "wanb"),
    ("up", "up", "failback", "wan"),
)


class Router:
    def __init__(self, index, port, rng, log):
        self.identity = "r%03d" % index
        s = wgrouter.model.MqttSettings(enabled=True, host="127.0.0.1", port=port, prefix=PREFIX,
                                        heartbeat=HEARTBEAT, queue_max=100)
        self.telemetry = wgrouter.mqtt.Telemetry(s, self.identity, log=log)
        self.rng = rng
        self.peers = {(tun, p): {"state": "up", "wan": "wan", "step": 0}
                      for tun in ("wg0", "wg1") for p in ("hq", "dc")}
        self.next_change = time.time() + rng.expovariate(1.0 / ROUTER_PERIOD)
        self.published_events = 0

    def snapshot(self, now):
        tunnels = {}
        for (tun, label), p in self.peers.items():
            tunnels.setdefault(tun, {"peers": {}})["peers"][label] = {
                "state": p["state"], "wan": p["wan"], "endpoint": "192.0.2.%d:51820" % (len(label) + 1),
                "endpoint_source": "uci", "keepalive": 25, "handshake_age": self.rng.uniform(0, 120),
                "rx": int(now) * 7, "tx": int(now) * 5, "last_step": None}
        wans = {"wan": {"up": True, "healthy": True, "active": True},
                "wanb": {"up": True, "healthy": True, "active": False}}
        return {"tunnels": tunnels, "wans": wans, "events": [], "version": wgrouter.__version__}

    def change(self, now):
        key = self.rng.choice(sorted(self.peers))
        p = self.peers[key]
        was, new, kind, wan = STEPS[p["step"] % len(STEPS)]
        p["step"] += 1
        p["state"] = new
        if wan:
            p["wan"] = wan
        self.telemetry.publish_state(self.snapshot(now))
        self.telemetry.publish_event({"time": now, "tunnel": key[0], "peer": key[1], "was": was, "now": new,
                                      "because": "fleet bench step %d" % p["step"], "kind": kind})
        self.published_events += 1
        self.next_change = now + self.rng.expovariate(1.0 / ROUTER_PERIOD)

    def next_deadline(self, now):
        return min(self.next_change, self.telemetry.heartbeat_due(now))


def run(routers=200, seconds=10.0, port=None, seed=1):
    broker = None
    if port is None:
        # The bench subscriber must never be the bottleneck that drops.
        broker = mosquitto.Broker(extra=["max_queued_messages 0", "max_inflight_messages 0"]).start()
        port = broker.port
    lines = []
    fleet = []
    sub = None
    try:
        target = broker or _External(port)
        sub = mosquitto.Subscriber(target, PREFIX + "/#")
        rng = random.Random(seed)
        fleet = [Router(i, port, random.Random(rng.random()), lines.append) for i in range(routers)]
        t0 = time.monotonic()
        for r in fleet:
            r.telemetry.start()
        deadline = time.monotonic() + CONNECT_WAIT
        while not all(r.telemetry.connected for r in fleet) and time.monotonic() < deadline:
            time.sleep(0.05)
        connected = sum(r.telemetry.connected for r in fleet)
        end = time.time() + seconds
        while True:
            now = time.time()
            if now >= end:
                break
            for r in fleet:
                if r.telemetry.heartbeat_due(now) <= now:
                    r.telemetry.heartbeat(now, r.snapshot(now))
                if r.next_change <= now:
                    r.change(now)
            wake = min(r.next_deadline(now) for r in fleet)
            time.sleep(max(0.0, min(wake, end) - time.time()))
        for r in fleet:
            r.telemetry.stop()
        published = sum(r.telemetry.sent for r in fleet)
        sub.wait(lambda ms: len(ms) >= published, SETTLE)
        elapsed = time.monotonic() - t0
        per_router = {}
        for _, topic, _ in list(sub.messages):
            parts = topic.split("/")
            if len(parts) > 1:
                per_router[parts[1]] = per_router.get(parts[1], 0) + 1
        received = sum(per_router.values())
        sent_by = {r.identity: r.telemetry.sent for r in fleet}
        short = sorted(i for i, n in sent_by.items() if per_router.get(i, 0) < n)
        result = {
            "routers": routers,
            "connected": connected,
            "seconds": seconds,
            "published": published,
            "received": received,
            "lost": max(0, published - received),
            "routers_short": short[:10],
            "events": sum(r.published_events for r in fleet),
            "dropped_in_queue": sum(r.telemetry.dropped for r in fleet),
            "msgs_per_s": round(received / elapsed, 1) if elapsed > 0 else 0.0,
            "problems": sorted(set(line for line in lines if "connected to broker" not in line))[:5],
        }
        return result
    finally:
        for r in fleet:
            r.telemetry.stop()  # no-op when already stopped
        if sub:
            sub.close()
        if broker:
            broker.close()


class _External:
    """Enough of mosquitto.Broker for Subscriber, for a broker given by --port."""

    def __init__(self, port):
        self.port = port

    def client_args(self, user=None, password=None, cert=False):
        return ["-h", "127.0.0.1", "-p", str(self.port)]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m bench.fleet", description=__doc__.splitlines()[0])
    ap.add_argument("--routers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=None, help="use a broker already listening on 127.0.0.1:PORT")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if not 1 <= args.routers <= 1000 or not 0 < args.seconds <= 600:
        ap.error("keep it bounded: 1..1000 routers, up to 600 seconds")
    result = run(args.routers, args.seconds, args.port, args.seed)
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["lost"] else 0)
