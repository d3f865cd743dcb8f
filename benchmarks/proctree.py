"""The whole cost of a command as a user runs it: wall time and the CPU seconds of its entire
process tree (every descendant, however short-lived, sampled every ``interval`` seconds until the
command exits; daemons it starts in a session of their own, such as Ray's GCS, raylet and agents,
are followed through the folder they name). Used to compare data prep with a peer on equal
terms: start-up, cluster processes and shut-down all counted (issue 21, item 9)."""

from __future__ import annotations

import subprocess
import time

import psutil


def run_measured(cmd: list[str], marker: str | None = None, interval: float = 0.05, **popen) -> dict:
    """Run ``cmd``; return {"seconds", "cpu_seconds", "returncode", "processes"}. ``marker``: a
    string in the command line of detached processes that belong to the run (e.g. the embedded
    Ray cluster's temp folder)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    seen: dict[tuple[int, float], float] = {}

    def sample() -> None:
        try:
            tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if marker:
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if marker in " ".join(p.info["cmdline"] or []):
                        tree.append(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        for p in tree:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    seen[(p.pid, p.create_time())] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    while proc.poll() is None:
        sample()
        time.sleep(interval)
    seconds = time.perf_counter() - t0
    for _ in range(20):  # detached processes finishing after the command returned
        if not marker:
            break
        before = len(seen)
        sample()
        if len(seen) == before and not any(marker in " ".join(p.info["cmdline"] or [])
                                           for p in psutil.process_iter(["cmdline"])):
            break
        time.sleep(interval)
    return {"seconds": seconds, "cpu_seconds": sum(seen.values()), "returncode": proc.returncode,
            "processes": len(seen)}
