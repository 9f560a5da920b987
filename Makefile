# wgrouter: developer entry points. See README.md.
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest

.PHONY: all test test-unit test-lab test-qemu demo bench ipk clean

all: test

test:
	$(PYTEST) -q tests

test-unit:
	$(PYTEST) -q -m "not lab and not qemu and not mqtt" tests

test-lab:
	$(PYTEST) -q -m lab tests

test-qemu:
	PYTHON=$(PYTHON) sh tests/qemu/run.sh

demo:
	$(PYTHON) -m tests.lab.demo

bench:
	$(PYTHON) -m bench.run

# the long chaos soak (bench/soak.py): make soak SOAK="--minutes 45 --seed 7"
.PHONY: soak
soak:
	$(PYTHON) -m bench.soak $(SOAK)

ipk:
	$(PYTHON) openwrt-feed/mkipk.py --out dist

clean:
	rm -rf dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
