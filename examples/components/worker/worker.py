"""uptime-worker: probes HTTP targets on an interval and serves the results.

Configuration (environment): TARGETS (comma-separated URLs), INTERVAL_SECONDS
(default 10), TIMEOUT_SECONDS (default 3), PORT (default 8090), STATE_FILE
(optional: where the probe count is kept across restarts).
"""
import http.server
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request


def parse_targets(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def load_total(path):
    """The probe count saved in the state file; 0 when there is none yet."""
    if not path or not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["probes"])


def save_total(path, total):
    """Written whole or not at all: a new file renamed over the old one."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump({"probes": total, "saved": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class State:
    def __init__(self, targets, interval, state_file=None):
        self.targets = targets
        self.interval = interval
        self.state_file = state_file
        self.lock = threading.Lock()
        self.last = {}
        self.total = load_total(state_file)
        self.last_round = 0.0

    def record(self, target, ok, seconds, status, error):
        with self.lock:
            self.total += 1
            self.last[target] = {
                "ok": ok,
                "seconds": round(seconds, 4),
                "status": status,
                "error": error,
                "at": time.time(),
            }

    def round_done(self):
        with self.lock:
            self.last_round = time.monotonic()
            if self.state_file:
                save_total(self.state_file, self.total)

    def alive(self):
        with self.lock:
            return time.monotonic() - self.last_round < 3 * self.interval + 5

    def status(self):
        with self.lock:
            return {"targets": dict(self.last), "probes": self.total}

    def metrics(self):
        lines = [
            "# HELP uptime_probe_success Whether the last probe of the target answered 2xx.",
            "# TYPE uptime_probe_success gauge",
        ]
        with self.lock:
            for t, r in sorted(self.last.items()):
                lines.append('uptime_probe_success{target="%s"} %d' % (t, 1 if r["ok"] else 0))
            lines += [
                "# HELP uptime_probe_duration_seconds Duration of the last probe.",
                "# TYPE uptime_probe_duration_seconds gauge",
            ]
            for t, r in sorted(self.last.items()):
                lines.append('uptime_probe_duration_seconds{target="%s"} %s' % (t, r["seconds"]))
            lines += [
                "# HELP uptime_probes_total Probes made since start.",
                "# TYPE uptime_probes_total counter",
                "uptime_probes_total %d" % self.total,
            ]
        return "\n".join(lines) + "\n"


def probe(url, timeout):
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300, time.monotonic() - start, r.status, None
    except urllib.error.HTTPError as e:
        return False, time.monotonic() - start, e.code, str(e)
    except Exception as e:  # refused, timeout, DNS: all mean "down"
        return False, time.monotonic() - start, None, str(e)


def loop(state, timeout, stop):
    while not stop.is_set():
        for t in state.targets:
            ok, secs, status, err = probe(t, timeout)
            state.record(t, ok, secs, status, err)
        state.round_done()
        stop.wait(state.interval)


def handler_for(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body, ctype):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                ok = state.alive()
                self._send(200 if ok else 503, "ok\n" if ok else "probe loop stalled\n", "text/plain")
            elif self.path == "/status":
                self._send(200, json.dumps(state.status()), "application/json")
            elif self.path == "/metrics":
                self._send(200, state.metrics(), "text/plain; version=0.0.4")
            else:
                self._send(404, "not found\n", "text/plain")

        def log_message(self, fmt, *args):
            pass

    return Handler


def main():
    targets = parse_targets(os.environ.get("TARGETS", ""))
    interval = float(os.environ.get("INTERVAL_SECONDS", "10"))
    timeout = float(os.environ.get("TIMEOUT_SECONDS", "3"))
    port = int(os.environ.get("PORT", "8090"))
    if not targets:
        print("uptime-worker: TARGETS is empty; set it to the URLs to probe", file=sys.stderr)
        return 2
    state = State(targets, interval, os.environ.get("STATE_FILE") or None)
    stop = threading.Event()
    threading.Thread(target=loop, args=(state, timeout, stop), daemon=True).start()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), handler_for(state))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(
        "uptime-worker: probing %d target(s) every %ss, serving :%d, %d probes so far"
        % (len(targets), interval, port, state.total),
        flush=True,
    )
    server.serve_forever()
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
