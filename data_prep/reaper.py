"""Nothing of an embedded Ray cluster outlives its driver, even one killed with SIGKILL, even
during ``ray.init``.

``ray.init()`` on one machine starts the GCS, a raylet and, under it, a dashboard agent, a
runtime-env agent and workers. When the driver is killed outright, the GCS and raylet die with it
but the agents and workers were seen to live on, adopted by init. A small watchdog in its own
session is started *before* the cluster, and the cluster is given a temporary folder of its own
(``ray.init(_temp_dir=...)``) that every one of its processes names on its command line. The
watchdog polls the driver; once it is gone it terminates every process that was a child of the
driver, or that names that folder, started after the driver (so a reused pid is never hit), then
removes the folder.

    python -m data_prep.reaper DRIVER_PID DRIVER_START TEMP_DIR
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil


def _alive(pid: int, start: float) -> psutil.Process | None:
    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - start) < 1e-3 else None
    except psutil.NoSuchProcess:
        return None


def cluster_temp_dir(driver_pid: int | None = None) -> str:
    """The temporary folder of the embedded cluster of this driver (short: Ray's socket paths
    live under it)."""
    return os.path.join(tempfile.gettempdir(), f"svgen-ray-{driver_pid or os.getpid()}")


def start_watchdog(temp_dir: str, driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for the cluster this process is about to start in ``temp_dir`` (call
    before ray.init: a driver killed inside ray.init leaves nothing behind either)."""
    driver = psutil.Process(driver_pid or os.getpid())
    return subprocess.Popen([sys.executable, "-m", "data_prep.reaper", str(driver.pid), f"{driver.create_time()!r}",
                             temp_dir], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cluster_processes(temp_dir: str, since: float) -> set[tuple[int, float]]:
    found = set()
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if p.info["create_time"] >= since and temp_dir in " ".join(p.info["cmdline"] or []):
                found.add((p.pid, p.info["create_time"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def main(argv: list[str]) -> None:
    driver_pid, driver_start, temp_dir = argv
    since = float(driver_start)
    watched: set[tuple[int, float]] = set()
    while (driver := _alive(int(driver_pid), since)) is not None:
        try:  # processes the cluster starts as it comes up (agents may come after ray.init returns)
            watched |= {(p.pid, p.create_time()) for p in driver.children(recursive=True) if p.pid != os.getpid()}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    watched |= _cluster_processes(temp_dir, since)  # those started between two polls, or adopted by init
    victims = [p for p in (_alive(pid, start) for pid, start in watched) if p is not None and p.pid != os.getpid()]
    for p in victims:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, rest = psutil.wait_procs(victims, timeout=3)
    for p in rest:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    time.sleep(0.5)  # a process mid-fork when the scan ran: once more
    for pid, start in _cluster_processes(temp_dir, since):
        p = _alive(pid, start)
        if p is not None and p.pid != os.getpid():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
