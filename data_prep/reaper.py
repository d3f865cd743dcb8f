"""Nothing of an embedded Ray cluster outlives its driver, even one killed with SIGKILL.

``ray.init()`` on one machine starts the GCS, a raylet and, under it, a dashboard agent and a
runtime-env agent. When the driver is killed outright, the GCS and raylet die with it but the two
agents were seen to live on, adopted by init. A small watchdog in its own session polls the
driver and, once it is gone, terminates every process the cluster had started (recorded with
their start times, so a reused pid is never hit).

    python -m data_prep.reaper DRIVER_PID PID:START [PID:START ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil


def _alive(pid: int, start: float) -> psutil.Process | None:
    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - start) < 1e-3 else None
    except psutil.NoSuchProcess:
        return None


def watch_embedded_cluster(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for the current process's Ray children (call right after ray.init)."""
    driver = psutil.Process(driver_pid or os.getpid())
    procs = [f"{p.pid}:{p.create_time()!r}" for p in driver.children(recursive=True)]
    return subprocess.Popen([sys.executable, "-m", "data_prep.reaper", str(driver.pid), f"{driver.create_time()!r}",
                             *procs], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str]) -> None:
    driver_pid, driver_start, *pairs = argv
    watched = {(int(p), float(s)) for p, s in (x.split(":", 1) for x in pairs)}
    while (driver := _alive(int(driver_pid), float(driver_start))) is not None:
        try:  # processes the cluster starts later (its agents may come up after ray.init returns)
            watched |= {(p.pid, p.create_time()) for p in driver.children(recursive=True) if p.pid != os.getpid()}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    victims = [p for p in (_alive(pid, start) for pid, start in watched) if p is not None]
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


if __name__ == "__main__":
    main(sys.argv[1:])
