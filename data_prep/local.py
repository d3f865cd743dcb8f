"""Shard tasks in worker processes of this machine, without Ray: the same stage code
(``write_shard``), the same retries, for a small job where a Ray cluster's start-up (seconds)
would be most of the run (issue 21, item 8). ``prep.executor`` chooses (see svgen.config).

Workers are forked (nothing to import again) and die with the driver: each asks the kernel for
SIGTERM when its parent goes (PR_SET_PDEATHSIG), so a driver killed with SIGKILL leaves no worker
writing on. A worker that crashes (a segfaulting decoder) breaks the pool; the pool is rebuilt
and the shards in flight are tried again, each up to ``max_retries`` times.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the pool's own shutdown still ends the workers
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle


def run_local(task: Callable, args_of: Callable[[int], tuple], todo: list[int], *, workers: int, max_retries: int,
              on_done: Callable[[int, dict | None, str | None], None]) -> None:
    """Run ``task(*args_of(k))`` for every k of ``todo`` on ``workers`` processes; ``on_done(k,
    result, error)`` once per k (error: the last failure, after ``max_retries`` retries)."""
    ctx = multiprocessing.get_context("fork")
    attempts = {k: 0 for k in todo}
    queue = list(todo)
    while queue:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent)
        pending: dict[Future, int] = {}
        broken = False
        try:
            while (queue or pending) and not broken:
                while queue and len(pending) < workers:
                    k = queue.pop(0)
                    attempts[k] += 1
                    pending[pool.submit(task, *args_of(k))] = k
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    k = pending.pop(fut)
                    try:
                        on_done(k, fut.result(), None)
                    except BrokenProcessPool:
                        broken = True
                        queue.insert(0, k)
                    except Exception as e:  # noqa: BLE001 - the task's own failure: retry it
                        if attempts[k] <= max_retries:
                            queue.append(k)
                        else:
                            on_done(k, None, f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
            if broken:  # a worker died: everything in flight goes round again
                queue = list(pending.values()) + queue
                for k in list(queue):
                    if attempts[k] > max_retries:
                        queue.remove(k)
                        on_done(k, None, "a worker process died while writing this shard (crash or out of memory)")
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)

