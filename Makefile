# wgrouter: developer entry points. See README.md.
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest

.PHONY: all deps test test-openwrt-versions test-unit test-lab test-qemu demo bench ipk clean

all: test

# Installs what the tests and the demo need (Debian 12, root); quick when
# everything is there.  `make test` and `make demo` run it first.
deps:
	bash .ci/deps

# The MQTT and DNS tests once more against the library versions OpenWrt 24.10
# ships (python3-paho-mqtt 1.6.1, python3-dns 2.4.1), in their own venv; then
# everything against the newest from PyPI.
OWRT_VENV = .venv-openwrt-24.10

# make test runs the 3-minute chaos soak (tests/test_soak.py) on one fixed
# seed, so that every run draws its faults from the same sequence;
# WGROUTER_SOAK_SEED=N runs another, make test-soak a random one.
WGROUTER_SOAK_SEED ?= 1201

test: deps test-openwrt-versions
	WGROUTER_SOAK_SEED=$(WGROUTER_SOAK_SEED) $(PYTEST) -q tests

test-openwrt-versions: deps
	WGROUTER_EXPECT_PAHO=1.6.1 WGROUTER_EXPECT_DNSPYTHON=2.4.1 \
		$(OWRT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_mqtt.py tests/test_resolve.py

test-unit:
	$(PYTEST) -q -m "not lab and not qemu and not mqtt" tests

test-lab:
	$(PYTEST) -q -m lab tests

test-qemu:
	PYTHON=$(PYTHON) sh tests/qemu/run.sh

demo: deps
	$(PYTHON) -m tests.lab.demo

bench:
	$(PYTHON) -m bench.run

# the long chaos soak (bench/soak.py): make soak SOAK="--minutes 45 --seed 7"
.PHONY: soak test-soak
# the short (3 minute) soak on a random seed; WGROUTER_SOAK_SEED=N replays one
test-soak:
	WGROUTER_SOAK=1 $(PYTEST) -q tests/test_soak.py

soak:
	$(PYTHON) -m bench.soak $(SOAK)

ipk:
	$(PYTHON) openwrt-feed/mkipk.py --out dist

clean:
	rm -rf dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
