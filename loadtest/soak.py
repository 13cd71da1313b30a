#!/usr/bin/env python3
"""The soak's sampler and plot (driven by loadtest/soak.sh; needs matplotlib).

  soak.py sample OUT_DIR LOADTEST_LOG NAME=PID@HOST:PORT ...   every 10 s until killed
  soak.py plot OUT_DIR [WARMUP_S] [TAIL_S] [END_S]             samples.csv -> soak.png, summary.txt

Each sample row: seconds since start, node, RSS (KiB, /proc/PID/status), open fds
(/proc/PID/fd), history bytes (relay_history_bytes), deliveries/s and p99 ms over the
last interval (deltas of relay_deliveries_total and of the relay_latency_seconds
buckets, as histogram_quantile over a rate does), and the load generator's silent
losses and errors so far (its progress line). The plot draws RSS, fds and p99 per node;
the summary fits a line to RSS and fds over the last TAIL_S seconds of the load (after
the warm-up, and not past END_S, the load's scheduled end: the drain after it closes
the sockets) and gives the slope in % per hour, the pass criteria of
docs/reliability.md.
"""

import csv
import os
import re
import sys
import time
import urllib.request

INTERVAL = 10.0


def metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def parse(text):
    """(deliveries, history_bytes, {le: count}) from a /metrics page."""
    deliveries = 0.0
    history = 0.0
    buckets = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        name = name_labels.split("{", 1)[0]
        if name == "relay_deliveries_total":
            deliveries += v
        elif name == "relay_history_bytes":
            history += v
        elif name == "relay_latency_seconds_bucket":
            m = re.search(r'le="([^"]+)"', name_labels)
            if m:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                buckets[le] = buckets.get(le, 0.0) + v
    return deliveries, history, buckets


def quantile(q, prev, cur):
    """histogram_quantile(q) over the bucket increase from prev to cur, in ms."""
    les = sorted(cur)
    inc = [(le, cur[le] - prev.get(le, 0.0)) for le in les]
    total = inc[-1][1] if inc else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lo, below = 0.0, 0.0
    for le, c in inc:
        if c >= rank:
            if le == float("inf"):
                return lo * 1000.0
            frac = (rank - below) / (c - below) if c > below else 1.0
            return (lo + (le - lo) * frac) * 1000.0
        lo, below = le, c
    return lo * 1000.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def loadtest_counts(path):
    """(silent, errors) from the last progress line of the load generator's log."""
    silent, errors = 0, 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.search(r"errors (\d+)\s+silent (\d+)", line)
                if m:
                    errors, silent = int(m.group(1)), int(m.group(2))
    except OSError:
        pass
    return silent, errors


def sample(out, log, specs):
    nodes = []
    for spec in specs:
        name, rest = spec.split("=", 1)
        pid, addr = rest.split("@", 1)
        nodes.append((name, int(pid), addr))
    prev = {}
    started = time.time()
    path = os.path.join(out, "samples.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "node", "rss_kib", "fds", "history_bytes",
                    "deliveries_per_s", "p99_ms", "silent_losses", "errors"])
        f.flush()
        next_at = started
        while True:
            next_at += INTERVAL
            time.sleep(max(0.0, next_at - time.time()))
            now = time.time()
            silent, errors = loadtest_counts(log)
            for name, pid, addr in nodes:
                try:
                    d, h, b = parse(metrics(addr))
                    rss = rss_kib(pid)
                    fds = len(os.listdir(f"/proc/{pid}/fd"))
                except (OSError, ValueError) as e:
                    print(f"soak: {name} not sampled: {e}", file=sys.stderr)
                    continue
                p = prev.get(name)
                if p:
                    rate = (d - p[1]) / (now - p[0])
                    p99 = quantile(0.99, p[2], b)
                else:
                    rate, p99 = float("nan"), float("nan")
                prev[name] = (now, d, b)
                w.writerow([f"{now - started:.0f}", name, rss, fds, f"{h:.0f}",
                            f"{rate:.0f}", f"{p99:.2f}", silent, errors])
            f.flush()


def slope_pct_per_hour(ts, ys):
    """Least-squares slope of ys over ts (s), as % of the mean per hour."""
    n = len(ts)
    if n < 3:
        return float("nan")
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0 or my == 0:
        return float("nan")
    k = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var
    return k * 3600.0 / my * 100.0


def plot(out, warmup, tail, load_end=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
    names = sorted({r["node"] for r in rows})
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    lines = []
    end = max(float(r["t_s"]) for r in rows) if rows else 0.0
    if load_end is not None:
        end = min(end, load_end)
    # The fit covers the last `tail` seconds of the load, and never the warm-up.
    fit_from = max(warmup, end - tail) if tail > 0 else warmup
    for name in names:
        rs = [r for r in rows if r["node"] == name]
        t = [float(r["t_s"]) / 60.0 for r in rs]
        axes[0].plot(t, [int(r["rss_kib"]) / 1024.0 for r in rs], label=name)
        axes[1].plot(t, [int(r["fds"]) for r in rs], label=name)
        axes[2].plot(t, [float(r["p99_ms"]) for r in rs], label=name)
        fit = [r for r in rs if fit_from <= float(r["t_s"]) <= end]
        ft = [float(r["t_s"]) for r in fit]
        for col in ("rss_kib", "fds"):
            s = slope_pct_per_hour(ft, [float(r[col]) for r in fit])
            lines.append(f"{name} {col} slope {fit_from:.0f}-{end:.0f} s: {s:+.2f} %/h "
                         f"({'flat' if abs(s) < 1.0 else 'NOT flat'} by the < 1 %/h rule)")
        p99s = [float(r["p99_ms"]) for r in fit if r["p99_ms"] != "nan"]
        if p99s:
            lines.append(f"{name} p99 ms per 10 s in the fit window: max {max(p99s):.1f}, "
                         f"median {sorted(p99s)[len(p99s) // 2]:.1f}")
        rss = [int(r["rss_kib"]) / 1024.0 for r in fit]
        fds = [int(r["fds"]) for r in fit]
        hist = [float(r["history_bytes"]) / 1048576.0 for r in fit]
        if rss:
            lines.append(f"{name} in the fit window: RSS {min(rss):.1f}-{max(rss):.1f} MiB, "
                         f"fds {min(fds)}-{max(fds)}, history {min(hist):.1f}-{max(hist):.1f} MiB")
        rates = [float(r["deliveries_per_s"]) for r in fit if r["deliveries_per_s"] != "nan"]
        if rates:
            lines.append(f"{name} deliveries/s in the fit window: mean {sum(rates) / len(rates):.0f}")
    if rows:
        lines.append(f"silent losses (live gaps): {rows[-1]['silent_losses']}; "
                     f"load errors: {rows[-1]['errors']}")
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].set_ylabel("open fds")
    axes[2].set_ylabel("p99 ms (10 s)")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        ax.axvline(warmup / 60.0, color="grey", linestyle=":", linewidth=1)
        ax.axvspan(fit_from / 60.0, end / 60.0, color="green", alpha=0.06)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    fig.suptitle("relay soak: two nodes on one Redis (dotted: end of warm-up; "
                 "shaded: the slope fit)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "soak.png"), dpi=90)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "plot":
        warm = float(sys.argv[3]) if len(sys.argv) > 3 else 1200.0
        tail = float(sys.argv[4]) if len(sys.argv) > 4 else 2400.0
        load_end = float(sys.argv[5]) if len(sys.argv) > 5 else None
        plot(sys.argv[2], warm, tail, load_end)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
