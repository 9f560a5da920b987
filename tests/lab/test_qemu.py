"""The kernel WireGuard tier: boot the QEMU VM and run the lab tests inside it.

Slow (minutes: the VM runs under TCG emulation), hence its own marker;
`make test-qemu` runs tests/qemu/run.sh directly with the same effect.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess

import pytest

from tests.fakerunner import REPO

RUNNER = os.path.join(REPO, "tests", "qemu", "run.sh")
# The runner has its own timeout (WGROUTER_QEMU_TIMEOUT); this one only
# guards against the runner itself hanging.
OUTER_TIMEOUT = 3300


def _unavailable():
    if os.geteuid() != 0:
        return "qemu tier needs root"
    if shutil.which("vng") is None:
        return "qemu tier needs virtme-ng (pip install virtme-ng)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu tier needs qemu-system-x86 (apt-get install qemu-system-x86)"
    kernel = os.environ.get("WGROUTER_QEMU_KERNEL")
    images = [kernel] if kernel else glob.glob("/boot/vmlinuz-6.1.0-*-amd64")
    if not any(os.path.exists(i) for i in images):
        return "qemu tier needs a Debian 6.1 kernel image (apt-get install linux-image-6.1.0-N-amd64)"
    return None


@pytest.mark.qemu
def test_lab_in_vm_with_kernel_wireguard():
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    # WGROUTER_QEMU_ARGS picks other tests for the VM (default: run.sh's own)
    args = shlex.split(os.environ.get("WGROUTER_QEMU_ARGS", ""))
    r = subprocess.run([RUNNER] + args, cwd=REPO, capture_output=True, text=True,
                       timeout=OUTER_TIMEOUT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    # the guest really ran the tests, in-kernel, and none failed or was skipped
    # for lack of kernel WireGuard
    assert "guest: kernel 6.1." in out, out[-3000:]
    summary = re.search(r"^=*\s*(\d+) passed.*$", out, re.M)
    assert summary, out[-3000:]
    assert "failed" not in summary.group(0) and "error" not in summary.group(0), summary.group(0)
    assert "needs in-kernel WireGuard" not in out, out[-3000:]


def test_runner_refuses_cleanly_without_prerequisites(tmp_path):
    # no vng on PATH (and no kernel image override that exists): exit 2 with a reason
    env = dict(os.environ, PATH="/usr/bin:/bin", WGROUTER_QEMU_KERNEL=str(tmp_path / "none"))
    r = subprocess.run(["sh", RUNNER], cwd=REPO, capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("qemu tier: needs "), r.stderr


def test_runner_passes_its_list_beside_the_kernel_command_line():
    """virtme-ng puts the guest command, base64-encoded, on the kernel command
    line, which x86 cuts at 2048 bytes; a list of scenarios there made a guest
    that never started its tests.  The runner's own command stays short however
    long the list, and every default node id names a test that exists."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    many = ["tests/test_scenarios.py::test_%s_%s" % ("x" * 80, i) for i in range(40)]
    for args in ([], many):
        env = dict(os.environ, WGROUTER_QEMU_DRY_RUN="1")
        r = subprocess.run(["sh", RUNNER] + args, cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        first, *listed = r.stdout.splitlines()
        size = int(re.search(r"\((\d+) bytes encoded\)", first).group(1))
        assert size <= 1200, first
        argfile = first.split()[-1].strip("'")
        assert not os.path.exists(argfile)  # removed on exit
        if args:
            assert listed == args
            continue
        assert listed[:2] == ["tests/test_kernel_wg.py", "tests/test_wg_kernel.py"]
        for node in listed[2:]:
            path, name = node.split("::")
            with open(os.path.join(REPO, path)) as f:
                assert "\ndef %s(" % name in f.read(), node
