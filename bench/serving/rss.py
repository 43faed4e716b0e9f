"""Resident memory of a process tree (a server and every process it started), from /proc.

The sampler runs in a thread: it re-reads which processes belong to the tree once a second
(a worker restarted after a crash joins it) and sums their RSS every 50 ms, keeping the
peak. Reading /proc for every process on the machine each 50 ms would itself cost CPU on a
small, shared machine, so only the tree's own files are read that often.
"""
import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list:
    """Direct children of pid (every thread's `children` file; else a /proc scan)."""
    try:
        out = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        return out
    except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                    if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                        out.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return out
    except OSError:
        return []


def tree(root: int) -> list:
    """root and all its descendants."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children(pid)
    return pids


def rss(pids) -> int:
    """Summed resident bytes of pids (processes that exited count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def tree_rss(root: int) -> int:
    return rss(tree(root))


class PeakSampler:
    """`with PeakSampler(pid) as s: ...` then `s.peak` (bytes): the tree's highest summed RSS."""

    def __init__(self, root: int, every_s: float = 0.05):
        self.root, self.every_s, self.peak = root, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        pids, listed = tree(self.root), time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - listed > 1.0:
                pids, listed = tree(self.root), time.monotonic()
            self.peak = max(self.peak, rss(pids))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.root))


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and its descendants (/proc/PID/stat utime + stime;
    a process that exited meanwhile is not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return total / tick

