#!/usr/bin/env python3
"""Heap growth between two massif snapshots, grouped by the allocation site nearest
the relay's own code (or glommio's): where the bytes per socket go.

    valgrind --tool=massif --massif-out-file=ms.out --depth=40 --threshold=0.2 \\
        target/release/relay serve --shards 1 --port P &
    loadtest run loadtest/scenarios/idle-hold.toml --url http://127.0.0.1:P \\
        --set sessions=200 --set sockets_per_session=10 --set duration=25s
    kill -TERM %1
    loadtest/massif-sites.py ms.out BEFORE PEAK 2000     # snapshot numbers, sockets

Prints the snapshots that have a heap tree, then the growth per site and per socket.
"""
import collections
import re
import sys

SITE = re.compile(r"(relay::|glommio::|tungstenite::|socket2|std::thread)")


def snapshots(path):
    lines = open(path).read().split("\n")
    snaps, i = {}, 0
    while i < len(lines):
        m = re.match(r"snapshot=(\d+)", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("heap_tree="):
            j += 1
        kind = lines[j].split("=", 1)[1]
        k, tree = j + 1, []
        while k < len(lines) and not lines[k].startswith(("#-", "snapshot=")):
            tree.append(lines[k])
            k += 1
        snaps[int(m.group(1))] = (kind, tree)
        i = k
    return snaps


def by_site(tree):
    """Bytes of each leaf of the tree, keyed by its nearest relay/glommio frame."""
    out, stack = collections.Counter(), []
    for line in tree:
        m = re.match(r"^( *)n(\d+): (\d+) (.*)$", line)
        if not m:
            continue
        depth, children, size, desc = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        stack = stack[:depth] + [desc]
        if children:
            continue
        key = "(no relay or glommio frame)"
        for frame in stack[1:]:
            if SITE.search(frame):
                f = re.search(r"0x[0-9A-F]+: (.*?) \(", frame)
                key = (f.group(1) if f else frame)[:150]
                break
        out[key] += size
    return out


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    path, before, after, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    snaps = snapshots(path)
    for n, (kind, tree) in sorted(snaps.items()):
        if kind in ("detailed", "peak"):
            print(f"snapshot {n} ({kind}): {sum(by_site(tree).values()):,} B")
    a, b = by_site(snaps[before][1]), by_site(snaps[after][1])
    growth = {k: b[k] - a.get(k, 0) for k in b}
    total = sum(growth.values())
    print(f"growth {total:,} B, {total / count:.1f} B per unit")
    for k, v in sorted(growth.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{v:12,d} {v / count:8.1f}  {k}")


if __name__ == "__main__":
    main()
