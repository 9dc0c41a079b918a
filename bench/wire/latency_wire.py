#!/usr/bin/env python3
"""Splits the idle enqueue-to-start latency into its server and client parts, from a
packet capture of the latency scenario's PostgreSQL traffic (see latency_wire.sh).

For every job the scenario enqueues, the capture shows on the wire:

  t_enqueue  our INSERT leaves the client (Bind of the enqueue statement)
  t_notify   the NOTIFY its commit sends reaches the client (a NotificationResponse)
  t_claim    the claim leaves the client (Bind of the claim statement)
  t_row      the claim's first reply packet comes back (BindComplete, DataRow)

so t_notify - t_enqueue is the server's INSERT, flushed commit and NOTIFY, t_claim -
t_notify is our process (listener wake, worker wake, claim sent), and t_row - t_claim
is the server's claim. Statements are told apart by the text of their Parse message,
which sqlx sends once per connection before the first Bind of a prepared statement, so
the capture must start before the scenario connects.

Usage: latency_wire.py CAPTURE.pcap [PORT]
Only the standard library: the capture is read as classic pcap (tcpdump -w).
"""

import bisect
import struct
import sys
from collections import defaultdict


def packets(path):
    """Yields (time, source port, destination port, TCP payload) of IPv4 TCP packets
    that carry data."""
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian classic pcap file (tcpdump -w writes one)")
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", header[20:24])[0]
        # Link-layer header length: Ethernet, Linux cooked v1 and v2, BSD loopback.
        skip = {1: 14, 113: 16, 276: 20, 0: 4}.get(link)
        if skip is None:
            sys.exit(f"{path}: link type {link} not supported")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, caught, _ = struct.unpack("<IIII", rec)
            data = f.read(caught)
            ip = data[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 15) * 4
            tcp = ip[ihl:]
            if len(tcp) < 20:
                continue
            src, dst = struct.unpack(">HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                yield sec + frac / scale, src, dst, payload


def messages(payload):
    """The (type, body) of each whole PostgreSQL message at the start of a packet (a
    capture's snap length may cut the last one)."""
    i = 0
    while i + 5 <= len(payload):
        length = struct.unpack(">I", payload[i + 1:i + 5])[0]
        yield chr(payload[i]), payload[i + 5:i + 1 + length]
        i += 1 + length


def statement(conn, msgs, names):
    """What a client packet runs: the text of the prepared statement its Bind names."""
    for kind, body in msgs:
        if kind == "P":
            name, rest = body.split(b"\0", 1)
            names[conn][name] = rest.split(b"\0", 1)[0].decode("utf8", "replace")
        elif kind == "B":
            _, rest = body.split(b"\0", 1)
            return names[conn].get(rest.split(b"\0", 1)[0], "")
    return None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 5432
    names = defaultdict(dict)
    waiting = {}  # connection -> (time sent, statement) awaiting its first reply
    enqueues, claims, notifies = [], [], []
    for t, src, dst, payload in packets(sys.argv[1]):
        if dst == port:
            sql = statement(src, messages(payload), names)
            if sql is not None:
                waiting[src] = (t, " ".join(sql.split()))
        elif src == port:
            if payload[:1] == b"A":
                notifies.append(t)
            sent = waiting.pop(dst, None)
            if sent is None:
                continue
            t0, sql = sent
            if sql.startswith("INSERT INTO") and ".jobs" in sql.split("(")[0]:
                enqueues.append((t0, t))
            elif sql.startswith("WITH RECURSIVE rl AS"):
                claims.append((t0, t))
    if not (enqueues and claims and notifies):
        sys.exit("no enqueue, claim or notification seen: did the capture start before "
                 "the scenario connected, on the right port?")
    starts = [c[0] for c in claims]
    sends = [e[0] for e in enqueues]
    parts = []
    for tn in notifies:
        i = bisect.bisect_right(sends, tn) - 1
        j = bisect.bisect_left(starts, tn)
        if i < 0 or j >= len(claims):
            continue
        t_enqueue, t_claim, t_row = sends[i], claims[j][0], claims[j][1]
        # A notification not caused by the latest enqueue, or a claim not sent for it
        # (a poll), is more than 10 ms away from it: not a sample.
        if tn - t_enqueue > 0.01 or t_claim - tn > 0.01:
            continue
        parts.append((tn - t_enqueue, t_claim - tn, t_row - t_claim, t_row - t_enqueue))
    if not parts:
        sys.exit("no enqueue -> notification -> claim sequence found")
    labels = [
        "server: INSERT, flushed commit, NOTIFY",
        "client: notification -> claim sent",
        "server: claim -> first row back",
        "on the wire: enqueue -> claimed row",
    ]
    print(f"{len(parts)} jobs (ms)")
    for k, label in enumerate(labels):
        v = sorted(p[k] * 1e3 for p in parts)
        pick = lambda q: v[min(len(v) - 1, int(len(v) * q))]
        print(f"  {label:40s} p50 {pick(0.5):6.3f}  p90 {pick(0.9):6.3f}  p99 {pick(0.99):6.3f}")


if __name__ == "__main__":
    main()
