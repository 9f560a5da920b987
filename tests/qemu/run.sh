#!/bin/sh
# The kernel WireGuard tier: boot a QEMU VM (virtme-ng, Debian's 6.1 kernel,
# which has WireGuard; the host kernel may not) that sees this checkout, and
# run the lab tests inside it with in-kernel WireGuard.  Exit code = pytest's.
#
#   tests/qemu/run.sh                        # kernel WireGuard's tests + tests/test_scenarios.py
#   tests/qemu/run.sh tests/lab/test_lab.py  # any pytest arguments instead
#
# Environment: PYTHON (host interpreter to use in the VM, default python3),
# WGROUTER_QEMU_KERNEL (default: newest /boot/vmlinuz-6.1.0-*-amd64),
# WGROUTER_QEMU_CPUS (2), WGROUTER_QEMU_MEMORY (2G), WGROUTER_QEMU_TIMEOUT
# (seconds, 3000), WGROUTER_LAB_SCALE (time-bound factor for the lab, 5).
# Needs root, qemu-system-x86, virtme-ng, a Debian 6.1 kernel image with its
# modules, and a static busybox (fetched with apt-get download if missing).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)

die() { echo "qemu tier: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (the VM runs the lab as root on this checkout)"
command -v vng >/dev/null || die "needs virtme-ng (pip install virtme-ng)"
command -v qemu-system-x86_64 >/dev/null || die "needs qemu-system-x86 (apt-get install qemu-system-x86)"
kernel=${WGROUTER_QEMU_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-6.1.0-*-amd64' | sort -V | tail -n 1)}
if [ -z "$kernel" ] || [ ! -r "$kernel" ]; then
    die "needs a kernel with WireGuard: apt-get install linux-image-6.1.0-<N>-amd64"
fi
kver=${kernel#*/vmlinuz-}
[ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver for $kernel"

# virtme-ng builds its initramfs from a statically linked busybox.  Debian's
# busybox-static conflicts with busybox (both are /bin/busybox; either serves
# the lab), so if the dynamic one is installed, keep a private static copy.
static_busybox() {
    for b in "$cache/busybox" /usr/bin/busybox /bin/busybox; do
        if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then
            echo "$b"
            return 0
        fi
    done
    command -v apt-get >/dev/null || return 1
    d=$(mktemp -d)
    (cd "$d" && apt-get download -q busybox-static >/dev/null 2>&1 &&
        dpkg-deb -x busybox-static_*.deb root) || { rm -rf "$d"; return 1; }
    mkdir -p "$cache" && cp "$d/root/bin/busybox" "$cache/busybox"
    rm -rf "$d"
    echo "$cache/busybox"
}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/wgrouter-qemu
busybox=$(static_busybox) || die "needs a static busybox (apt-get install busybox-static)"

# The VM shares the host's filesystem, so the host's interpreter (and the
# pytest/dnspython/paho-mqtt installed for it) works inside unchanged; resolve
# it to a real path because shims such as pyenv's need the host's PATH.
py=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)') || die "no ${PYTHON:-python3}"
"$py" -c 'import pytest' 2>/dev/null || die "$py has no pytest"

q() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }
if [ $# -eq 0 ]; then
    # Kernel WireGuard's own tests (the kernel's, wgrouter.wg's and the lab's
    # probe for it), and the scenarios whose outcome depends on how the kernel
    # picks and caches a peer's source address (failover, failback, NAT,
    # IPv6, policy routing), and the TCP relay's (the kernel's peer pointed
    # at a local socket); the config-only and reload scenarios behave the
    # same on either backend and stay on the host.
    s=tests/test_scenarios.py
    set -- tests/test_kernel_wg.py tests/test_wg_kernel.py \
        tests/lab/test_wgdev.py::test_kernel_has_wireguard_matches_ip_link \
        $s::test_carrier_loss_fails_over_to_backup_without_leak \
        $s::test_carrier_loss_on_a_static_wan_is_acted_on_from_the_kernels_link_state \
        $s::test_silent_upstream_failure_recovered_within_three_checks \
        $s::test_udp_blocked_on_backup_recovers_through_alternate_port \
        $s::test_dns_move_recovered_within_ttl_and_a_check \
        $s::test_cgnat_nat_loss_recovered_without_restart \
        $s::test_failback_after_holddown_without_outage \
        $s::test_flapping_primary_bounded_actions_and_stable_end \
        $s::test_both_down_then_backup_then_failback \
        $s::test_killed_mid_failover_respawn_converges_without_duplicates \
        $s::test_stop_removes_only_what_it_added_and_restart_adopts \
        $s::test_mwan3_silent_failure_moves_the_flow_despite_connmark \
        $s::test_ipv6_endpoint_fails_over_to_backup_over_ipv6 \
        $s::test_ipv4_only_backup_takes_the_ipv4_candidate_and_fails_back \
        tests/test_relay_lab.py::test_udp_blocked_everywhere_tunnel_over_the_relay_follows_a_carrier_loss \
        tests/test_relay_lab.py::test_wgrouter_takes_the_relay_when_udp_is_blocked_everywhere_and_returns_to_udp
fi

# virtme-ng hands the guest its command base64-encoded on the kernel command
# line, which the kernel cuts at 2048 bytes (COMMAND_LINE_SIZE on x86): a
# longer one boots a guest that runs a truncated script and never ends.  So
# the pytest arguments go through a file in the shared checkout, one per line.
argfile=$(mktemp "$repo/tests/qemu/.args.XXXXXX")
trap 'rm -f "$argfile"' EXIT
printf '%s\n' "$@" >"$argfile"

guest="cd $(q "$repo") && WGROUTER_LAB_KERNEL_WG=1 WGROUTER_LAB_SCALE=$(q "${WGROUTER_LAB_SCALE:-5}")"
guest="$guest sh tests/qemu/guest.sh $(q "$py") $(q "$argfile")"
# what virtme-ng puts on the command line for it, beside its own ~600 bytes
encoded=$(printf %s "$guest" | base64 -w0 | wc -c)
[ "$encoded" -le 1200 ] || die "the guest command is $encoded bytes encoded: move the checkout to a shorter path"
if [ -n "${WGROUTER_QEMU_DRY_RUN:-}" ]; then
    echo "qemu tier: guest command ($encoded bytes encoded): $guest"
    cat "$argfile"
    exit 0
fi

start=$(date +%s)
echo "qemu tier: booting $kernel (TCG, ${WGROUTER_QEMU_CPUS:-2} cpus) to run: $*"
rcfile=$(mktemp)
# KVM is not used on purpose: with it the guest hangs on this setup.  TCG
# emulation is several times slower, hence WGROUTER_LAB_SCALE.  The pipe through
# cat matters: QEMU reopens its stdout/stderr, which on a plain log file would
# give each its own offset and make them overwrite each other.
{
    rc=0
    timeout --kill-after=30 "${WGROUTER_QEMU_TIMEOUT:-3000}" \
        vng --run "$kernel" --disable-kvm --cpus "${WGROUTER_QEMU_CPUS:-2}" \
            --memory "${WGROUTER_QEMU_MEMORY:-2G}" --busybox "$busybox" --user root --rw \
            -- "$guest" </dev/null || rc=$?
    echo "$rc" >"$rcfile"
} 2>&1 | cat
rc=$(cat "$rcfile")
rm -f "$rcfile"
echo "qemu tier: exit $rc after $(( $(date +%s) - start )) s wall"
exit "$rc"
