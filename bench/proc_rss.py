"""Resident memory of a process and all its descendants, read from /proc (Linux only, no psutil needed).

A server's footprint is its whole tree: uvicorn workers, tokenizer or torch helper processes all hold memory
that an operator pays for, so the comparison sums VmRSS over the tree rooted at the server's pid.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children file; empty when the process is gone)."""
    found: list[int] = []
    for task in (PROC / str(pid) / "task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def vm_rss_bytes(pid: int) -> int:
    """VmRSS of one process in bytes; 0 when it is gone or is a zombie (no VmRSS line)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


def tree_rss_bytes(pid: int) -> int:
    """Sum of VmRSS over `pid` and every descendant (shared pages count once per process, as `ps` shows)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        total += vm_rss_bytes(current)
        stack.extend(children(current))
    return total
