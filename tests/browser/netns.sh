#!/usr/bin/env bash
# Runs relayd and the browser driver inside a fresh network namespace of their own (unshare -n):
# loopback, plus a veth pair with 198.18.0.1 (the RFC 2544 benchmarking range) because Chromium
# gathers no ICE candidates on loopback. Nothing in the namespace can reach any other network.
#   unshare -n bash netns.sh TWISTD CONFIG PORT COMMAND...
set -euo pipefail
ip link set lo up
# no IPv6 here: address autoconfiguration on the veth pair would change the network under Chromium
# seconds after it starts (net::ERR_NETWORK_CHANGED)
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add relayd0 type veth peer name relayd1
ip addr add 198.18.0.1/24 dev relayd0
ip link set relayd0 up
ip link set relayd1 up
# Chromium looks for a default route before it gathers host candidates; this one leads nowhere
ip route add default via 198.18.0.2 dev relayd0
twistd=$1 config=$2 port=$3
shift 3
"$twistd" --nodaemon --pidfile= relayd --config "$config" >"$(dirname "$config")/relayd.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
"$@"
