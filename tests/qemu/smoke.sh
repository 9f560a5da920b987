#!/bin/sh
# Proof of the kernel tier, run inside the VM (or any host whose kernel has
# WireGuard): two namespaces joined by a veth, an in-kernel WireGuard device
# in each, a handshake, a ping through the tunnel.  Prints timings.
set -eu
umask 077
p="s$$"
a="$p-a"; b="$p-b"
tmp=$(mktemp -d)
cleanup() {
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
now() { date +%s.%N; }
modprobe wireguard 2>/dev/null || true
ip netns add "$a"
ip netns add "$b"
ip link add va netns "$a" type veth peer name vb netns "$b"
ip -n "$a" addr add 172.31.0.1/24 dev va
ip -n "$b" addr add 172.31.0.2/24 dev vb
ip -n "$a" link set va up
ip -n "$b" link set vb up
ip -n "$a" link set lo up
ip -n "$b" link set lo up
wg genkey > "$tmp/ka"; wg pubkey < "$tmp/ka" > "$tmp/pa"
wg genkey > "$tmp/kb"; wg pubkey < "$tmp/kb" > "$tmp/pb"
ip -n "$a" link add wga type wireguard
ip -n "$b" link add wgb type wireguard
ip netns exec "$a" wg set wga listen-port 51820 private-key "$tmp/ka" \
    peer "$(cat "$tmp/pb")" allowed-ips 10.9.0.2/32 endpoint 172.31.0.2:51820
ip netns exec "$b" wg set wgb listen-port 51820 private-key "$tmp/kb" \
    peer "$(cat "$tmp/pa")" allowed-ips 10.9.0.1/32 endpoint 172.31.0.1:51820
ip -n "$a" addr add 10.9.0.1/24 dev wga
ip -n "$b" addr add 10.9.0.2/24 dev wgb
ip -n "$a" link set wga up
ip -n "$b" link set wgb up
t0=$(now)
ip netns exec "$a" ping -c 1 -W 20 10.9.0.2 >/dev/null
t1=$(now)
hs=$(ip netns exec "$a" wg show wga latest-handshakes | cut -f2)
[ "$hs" -gt 0 ]
ip netns exec "$a" ping -c 3 -i 0.2 -W 5 10.9.0.2 >/dev/null
echo "smoke: in-kernel WireGuard handshake + first ping $(awk "BEGIN{printf \"%.2f\", $t1-$t0}") s"
echo "smoke: OK"
