"""Which WireGuard the lab runs: the kernel's when it has one, else wireguard-go.

OpenWrt routers run in-kernel WireGuard, whose cached source address behaves
differently from wireguard-go's, so the lab uses the kernel module whenever
the running kernel has it (the QEMU tier, tests/qemu/run.sh) and falls back
to wireguard-go (a foreground child per device) everywhere else.

    WGROUTER_LAB_KERNEL_WG=1   kernel WireGuard, fail if the kernel has none
    WGROUTER_LAB_KERNEL_WG=0   always wireguard-go
    unset                      kernel when available, else wireguard-go
    WGROUTER_LAB_SCALE=N       multiply the lab's time bounds by N (slow VMs)

``start(lab, ns, dev)`` needs from ``lab`` only what topology.Lab has:
``ip(ns, *args, check=)``, ``popen(ns, *cmd, stdout=, stderr=)``,
``log(name)``, ``stop_process(p)``.
"""

import os
import shutil
import subprocess
import time

WG_RUN_DIR = "/var/run/wireguard"
KERNEL = "kernel"
USERSPACE = "wireguard-go"
# wireguard-go needs a moment to create its tun device and UAPI socket; a
# TCG-emulated VM is far slower than a host, hence the generous bound.
START_TIMEOUT = 10.0

_kernel = []  # cached answer of kernel_has_wireguard()


class WgDevError(Exception):
    """WireGuard device could not be started"""


class Handle:
    """A started WireGuard device: ``kind`` is KERNEL or USERSPACE."""

    def __init__(self, lab, ns, dev, kind, proc=None):
        self.lab = lab
        self.ns = ns
        self.dev = dev
        self.kind = kind
        self.proc = proc

    def __repr__(self):
        return "<wgdev %s %s in %s>" % (self.kind, self.dev, self.ns)


def scale():
    """WGROUTER_LAB_SCALE as a float >= 1 (1 when unset or invalid)."""
    try:
        return max(1.0, float(os.environ.get("WGROUTER_LAB_SCALE", "1")))
    except ValueError:
        return 1.0


def kernel_has_wireguard():
    """True if ``ip link add X type wireguard`` works (tried in a throwaway netns)."""
    if not _kernel:
        _kernel.append(_probe_kernel())
    return _kernel[0]


def _probe_kernel():
    # modprobe first: a modular kernel loads it on demand only for some paths
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "wireguard"], capture_output=True)
    ns = "twgk%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False
    try:
        r = subprocess.run(["ip", "-n", ns, "link", "add", "wgprobe", "type", "wireguard"],
                           capture_output=True)
        return r.returncode == 0
    finally:
        # deleting the netns deletes the device with it
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def backend():
    """KERNEL or USERSPACE, following WGROUTER_LAB_KERNEL_WG (see the module doc)."""
    want = os.environ.get("WGROUTER_LAB_KERNEL_WG", "")
    if want == "0":
        return USERSPACE
    if want == "1":
        if not kernel_has_wireguard():
            raise WgDevError("WGROUTER_LAB_KERNEL_WG=1 but this kernel has no WireGuard")
        return KERNEL
    return KERNEL if kernel_has_wireguard() else USERSPACE


def start(lab, ns, dev):
    """Create WireGuard device DEV in lab namespace NS; returns a Handle."""
    if backend() == KERNEL:
        r = lab.ip(ns, "link", "add", "dev", dev, "type", "wireguard", check=False)
        if r.returncode != 0:
            raise WgDevError("ip link add %s type wireguard in %s: %s"
                             % (dev, ns, r.stderr.strip()))
        return Handle(lab, ns, dev, KERNEL)
    sock = os.path.join(WG_RUN_DIR, dev + ".sock")
    p = lab.popen(ns, "wireguard-go", "-f", dev,
                  stdout=open(lab.log("wireguard-go-%s.log" % dev), "a"),
                  stderr=subprocess.STDOUT)
    handle = Handle(lab, ns, dev, USERSPACE, p)
    deadline = time.monotonic() + START_TIMEOUT * scale()
    while not (os.path.exists(sock)
               and lab.ip(ns, "link", "show", dev, check=False).returncode == 0):
        if p.poll() is not None or time.monotonic() > deadline:
            stop(handle)
            raise WgDevError("wireguard-go %s did not start in %s (exit %s)"
                             % (dev, ns, p.returncode))
        time.sleep(0.05)
    return handle


def stop(handle):
    """Remove the device (and its wireguard-go process); safe to call twice."""
    if handle is None:
        return
    lab = handle.lab
    if handle.kind == KERNEL:
        lab.ip(handle.ns, "link", "del", handle.dev, check=False)
        return
    lab.stop_process(handle.proc)
    sock = os.path.join(WG_RUN_DIR, handle.dev + ".sock")
    try:
        os.unlink(sock)
    except OSError:
        pass
