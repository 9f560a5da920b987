"""The short chaos soak (tests/lab/soak.py): about 3 minutes of seeded
random faults against wgrouter in the IPv6 dual-WAN lab, with the stand-in
bus.  A failure names its seed; replay it with

    WGROUTER_SOAK_SEED=N python3 -m pytest -q tests/test_soak.py

(WGROUTER_SOAK_MINUTES changes the length; ``make soak`` is the long run.)

It runs when a seed is given or WGROUTER_SOAK=1 asks for a random one:
``make test`` gives it its fixed seed (the Makefile's WGROUTER_SOAK_SEED), so
that every run of the suite plays the same schedule; ``make test-soak``
draws a random one.  A plain ``pytest tests`` skips it.
"""

import os
import random
import sys

import pytest

from tests.conftest import require_lab

pytestmark = pytest.mark.lab


@pytest.mark.skipif(not (os.environ.get("WGROUTER_SOAK") or os.environ.get("WGROUTER_SOAK_SEED")),
                    reason="the chaos soak runs with a seed: make test, make test-soak (see the docstring)")
def test_seeded_chaos_soak_keeps_every_promise():
    require_lab()
    from tests.lab import soak
    seed = int(os.environ.get("WGROUTER_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    minutes = float(os.environ.get("WGROUTER_SOAK_MINUTES", "3"))
    print("soak seed %d (replay: WGROUTER_SOAK_SEED=%d)" % (seed, seed), file=sys.stderr)
    res = soak.Soak(seed, minutes * 60).run()
    replay = "seed %d, replay with WGROUTER_SOAK_SEED=%d" % (seed, seed)
    assert res["problems"] == [], "%s:\n%s" % (replay, "\n".join(res["problems"]))
    # it did what it says: many faults, several at once, every input's junk
    assert res["faults_injected"] >= 3 * minutes, (replay, res["faults_injected"])
    assert res["faults_survived"] == res["faults_injected"], replay
    assert res["leaks"] == 0 and res["final"]["routes_left"] == [], replay
