"""The threads plain (not async) modules run on, so that none blocks the event loop.

Python cannot stop a thread. A call whose awaiting side gave up (its flowlet timed out
or was cancelled) while the module still runs is **stuck**: its result is dropped when
it comes, it is logged once naming the flowlet, and it is counted (``stuck``,
``flow8_module_threads_stuck``). A stuck thread does not count against ``size``: another
thread takes its place, up to ``size`` stuck ones; past that, calls wait for a thread
to come back, and each one that has to wait like this is logged.

The threads are daemon threads, made here rather than by ``concurrent.futures``:
the standard pools join every worker at interpreter exit, so one module stuck for
good would keep the process from ever exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flow8.executor")

DEFAULT_SIZE = 32

_Job = tuple[concurrent.futures.Future[Any], Callable[[Any], Any], Any]


class ModuleThreads:
    """At most ``size`` threads at work, plus up to ``size`` stuck ones."""

    def __init__(self, size: int = DEFAULT_SIZE, *, on_stuck: Callable[[int], None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"module threads: size must be at least 1, not {size}")
        self.size = size
        self._on_stuck = on_stuck  # told the number of stuck calls whenever it changes
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._idle = threading.Semaphore(0)
        self._stuck = 0
        self._closed = False

    @property
    def stuck(self) -> int:
        """Calls given up on whose thread still runs."""
        return self._stuck

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threads(self) -> int:
        return len(self._threads)

    async def call(self, fn: Callable[[Any], Any], arg: Any, *, what: str) -> Any:
        """``fn(arg)`` on a thread. Cancelled, the call returns at once; a module already
        running goes on and is stuck until it returns (``what`` names it in the log)."""
        job: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # the module runs in the caller's context: its log records carry the play it works for
        context = contextvars.copy_context()
        self._submit((job, lambda module_ctx: context.run(fn, module_ctx), arg), what)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.cancel():  # running: it cannot be stopped
                self._stick(job, what)
            raise

    def close(self) -> None:
        """Calls not started are cancelled; idle threads exit, stuck ones when they return."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    queued = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if queued is not None:
                    queued[0].cancel()
            for _ in self._threads:
                self._jobs.put(None)

    def _submit(self, job: _Job, what: str) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("module threads are closed")
            self._jobs.put(job)
            if self._idle.acquire(blocking=False):
                return
            if len(self._threads) - self._stuck < self.size and len(self._threads) < 2 * self.size:
                thread = threading.Thread(target=self._work, name=f"flow8-module-{len(self._threads)}", daemon=True)
                self._threads.add(thread)
                thread.start()
            elif self._stuck:
                log.warning(
                    "%s waits for a module thread: %d of %d are stuck in calls past their timeout "
                    "(flow8_module_threads_stuck); raise FLOW8_MODULE_THREADS or fix the modules",
                    what,
                    self._stuck,
                    len(self._threads),
                )

    def _stick(self, job: concurrent.futures.Future[Any], what: str) -> None:
        with self._lock:
            self._stuck += 1
            stuck = self._stuck
        log.warning(
            "%s: its plain module still runs on its thread after the attempt ended (timed out or cancelled); "
            "its result will be dropped (%d module thread(s) stuck)",
            what,
            stuck,
        )
        self._tell(stuck)
        job.add_done_callback(self._unstick)

    def _unstick(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._stuck -= 1
            stuck = self._stuck
        self._tell(stuck)

    def _tell(self, stuck: int) -> None:
        if self._on_stuck is not None:
            self._on_stuck(stuck)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                with self._lock:
                    self._threads.discard(threading.current_thread())
                return
            future, fn, arg = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(arg))
                except BaseException as exc:  # handed to the awaiting side, which judges it
                    future.set_exception(exc)
                del future, fn, arg, job
            self._idle.release()
