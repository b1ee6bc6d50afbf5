#!/usr/bin/env python3
"""A bounded load loop for the rolling-deploy case (stdlib only).

loadloop.py URL [--workers N] [--rate R] [--max-seconds S] [--max-requests M]

N workers (default 4) send GET URL over keep-alive connections (TLS not
verified: the stack's certificate is self-signed), at most R requests/s in
total (default 100), until SIGINT/SIGTERM, S seconds (default 300) or M
requests (default 100000), whichever comes first. Only loopback URLs are
accepted. Prints one JSON object: requests, ok, failed, by status/error kind,
seconds. A request fails when it raises or answers anything but 200.
"""
import argparse
import http.client
import json
import signal
import ssl
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

stop = threading.Event()


def worker(url, interval, deadline, budget, lock, counts):
    u = urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    ctx = ssl._create_unverified_context()
    conn = None
    nxt = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        try:
            if conn is None:
                if u.scheme == "https":
                    conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=5, context=ctx)
                else:
                    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            kind = str(r.status)
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:  # any failure counts; reconnect next time
            kind = type(e).__name__
            if conn is not None:
                conn.close()
            conn = None
        with lock:
            counts[kind] += 1
        nxt += interval
        pause = nxt - time.monotonic()
        if pause > 0:
            stop.wait(pause)
        else:
            nxt = time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--max-requests", type=int, default=100000)
    a = ap.parse_args()
    host = urlsplit(a.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"loadloop: {a.url}: only loopback targets are allowed")
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    counts, lock, budget = Counter(), threading.Lock(), [a.max_requests]
    t0 = time.monotonic()
    deadline = t0 + a.max_seconds
    interval = a.workers / a.rate
    threads = [threading.Thread(target=worker, args=(a.url, interval, deadline, budget, lock, counts), daemon=True)
               for _ in range(a.workers)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    total = sum(counts.values())
    ok = counts.get("200", 0)
    print(json.dumps({"requests": total, "ok": ok, "failed": total - ok, "by_kind": dict(counts),
                      "seconds": round(time.monotonic() - t0, 2)}))


if __name__ == "__main__":
    main()
