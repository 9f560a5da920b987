#!/bin/sh
# Runs inside the VM started by tests/qemu/run.sh: guest.sh PYTHON ARGFILE,
# ARGFILE holding pytest's arguments one per line (they do not fit on the
# kernel command line that carries this command).
set -u
py=$1
argfile=$2
set --
while IFS= read -r a; do set -- "$@" "$a"; done <"$argfile"
echo "guest: kernel $(uname -r), booted in $(cut -d' ' -f1 /proc/uptime) s"
# wireguard for the lab, tun so wireguard-go stays usable for comparisons
modprobe wireguard || { echo "guest: no wireguard module" >&2; exit 3; }
modprobe tun 2>/dev/null || true
# load up front what the lab's nft/conntrack use instead of relying on
# on-demand loading from inside namespaces
for m in veth nf_conntrack nf_conntrack_netlink nft_ct nft_chain_nat nft_nat nft_masq \
    nft_limit nft_log nft_reject_inet nft_queue nfnetlink_queue; do
    modprobe "$m" 2>/dev/null || echo "guest: module $m not loaded" >&2
done
umask 077
export PYTHONDONTWRITEBYTECODE=1
# the lab (topology.Lab -> tests/lab/wgdev.py) must pick the kernel here
"$py" -c 'from tests.lab import wgdev; print("guest: lab WireGuard backend:", wgdev.backend())' ||
    exit 3
"$py" -m pytest -q -m lab -p no:cacheprovider "$@"
rc=$?
echo "guest: pytest exit $rc after $(cut -d' ' -f1 /proc/uptime) s uptime"
exit $rc
