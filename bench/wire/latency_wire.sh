#!/usr/bin/env bash
# Captures the PostgreSQL traffic of our idle-latency scenario with tcpdump and splits
# enqueue-to-start into the server's and the client's parts (latency_wire.py).
#
#   bash bench/wire/latency_wire.sh [BENCH_BINARY] [extra bench flags ...]
#
# BENCH_BINARY defaults to bench/target/release/durable-jobs-bench (build it first with
# `cargo build --release --manifest-path bench/Cargo.toml`). The bench's server must be
# reached over TCP on loopback (the default URL is); PGPORT picks the port to capture
# (5432). Needs tcpdump (Debian package `tcpdump`) and the right to capture on `lo`
# (root, or CAP_NET_RAW); as root it installs a missing tcpdump with apt-get.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-}
bin=${bin:-$here/../target/release/durable-jobs-bench}
shift || true
port=${PGPORT:-5432}
[ -x "$bin" ] || { echo "no bench binary at $bin: build it first" >&2; exit 2; }
if ! command -v tcpdump >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq tcpdump >/dev/null
    else
        echo "tcpdump is missing: install the Debian package tcpdump" >&2; exit 2
    fi
fi
cap=$(mktemp --suffix=.pcap)
# tcpdump drops its privileges to user tcpdump: let it write the file.
chmod 666 "$cap"
log=$(mktemp)
trap 'rm -f "$cap" "$log"' EXIT
tcpdump -i lo -s 256 -U -w "$cap" "tcp port $port" 2>"$log" &
dump=$!
# The scenario must connect after the capture starts (statements are named by the Parse
# sent on each new connection): wait for tcpdump to say it listens (5 s at most).
for _ in $(seq 50); do
    grep -q "listening on" "$log" && break
    kill -0 "$dump" 2>/dev/null || { cat "$log" >&2; exit 2; }
    sleep 0.1
done
grep -q "listening on" "$log" || { echo "tcpdump did not start: $(cat "$log")" >&2; exit 2; }
"$bin" --backend postgres --systems ours --scenario latency "$@" 2>&1 | grep -E "idle latency"
kill "$dump"; wait "$dump" || true
python3 "$here/latency_wire.py" "$cap" "$port"
