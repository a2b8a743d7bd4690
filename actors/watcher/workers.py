"""A small bounded pool for the syscalls that may block: the loop hands them over and goes on.

fsync waits for the disk (seconds, behind another process's big `conv=fsync` write), a walk
of a large tree takes as long as the tree is big, and watchdog places a recursive watch by
walking every directory: none of it may run on the actor's loop, whose hang detection would
take the wait for a hang. `Workers.submit(blocking, finish)` runs `blocking()` on one of a
few threads and then `finish(value)` back on the loop (through `wake`, the loop's
`call_soon_threadsafe`, once for all the jobs that finished meanwhile), so everything that
touches the actor's state stays single-threaded. The threads are plain daemon threads over
a SimpleQueue rather than a ThreadPoolExecutor: a job there costs a Future with its own
Condition, and the loop's share of a pipelined small write was most of the write.

The queue is bounded: past `threads + queue` jobs in flight, `submit` refuses at once with
`busy` and a `retry_after_ms` (a full queue answers, it does not grow). A job's outcome is a
`Job`: `then(fn)` runs `fn(job)` on the loop once it is settled, and `result()` returns the
value or raises what `blocking` or `finish` raised (an OSError stays an OSError, so the
retry policy can classify it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from loguru import logger

from moorage.protocol.errors import fail

Wake = Callable[[Callable[[], None]], None]


class Job:
    """The outcome of one job, settled on the loop."""

    __slots__ = ("_then", "done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._then: list[Callable[[Job], None]] = []

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        then, self._then = self._then, []
        for fn in then:
            _run_isolated(fn, self)

    def then(self, fn: Callable[[Job], None]) -> None:
        """Run `fn(self)` once settled (at once when it already is)."""
        if self.done:
            fn(self)
        else:
            self._then.append(fn)

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def _run_isolated(fn: Callable[..., None], *args: Any) -> None:
    """One of several callbacks run together: one that raises must not strand the others
    (the jobs behind it would never settle, and their requests never be answered)."""
    try:
        fn(*args)
    except Exception:
        logger.exception("workers: a callback raised")


# Hands a blocking function to a worker and its bookkeeping back to the loop
# (Workers.submit: `busy` when the pool is full).
Offload = Callable[[Callable[[], Any], Callable[[Any], Any]], Job]


class Workers:
    def __init__(self, name: str, wake: Wake, *, threads: int = 2, queue: int = 32,
                 retry_after_ms: int = 50) -> None:
        self.name = name
        self.wake = wake
        self.threads = threads
        self.limit = threads + queue
        self.retry_after_ms = retry_after_ms
        # Jobs for the threads (a C queue: a submit costs a put, no Future and no lock of
        # ours), and finished jobs' loop halves for the loop.
        self._jobs: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._started: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._done: list[Callable[[], None]] = []
        self._wake_pending = False
        self.in_flight = 0
        self.done = 0
        self.refused = 0
        self.peak = 0

    def submit(self, blocking: Callable[[], Any],
               finish: Callable[[Any], Any] | None = None) -> Job:
        """Run `blocking()` on a worker, then `finish(value)` on the loop; `busy` when the
        queue is full. Called on the loop only."""
        if self.in_flight >= self.limit:
            self.refused += 1
            raise fail("busy", f"{self.name}: {self.in_flight} jobs in flight (the most "
                       f"allowed); retry", retry_after_ms=self.retry_after_ms,
                       detail={"pool": self.name, "in_flight": self.in_flight})
        if len(self._started) < min(self.threads, self.in_flight + 1):
            self._start_thread()  # threads only as jobs need them
        job = Job()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

        def on_loop(value: Any, error: BaseException | None) -> None:
            self.in_flight -= 1
            self.done += 1
            if error is None and finish is not None:
                try:
                    value = finish(value)
                except BaseException as exc:  # handed to whoever waits on the job
                    value, error = None, exc
            job.settle(value, error)

        def run() -> None:
            nonlocal blocking
            work, blocking = blocking, None  # what it holds goes once it ran (`_work`)
            try:
                value, error = work(), None
            except BaseException as exc:
                value, error = None, exc
            del work
            self._hand_back(lambda: on_loop(value, error))

        self._jobs.put(run)
        return job

    def _start_thread(self) -> None:
        t = threading.Thread(target=self._work, name=f"mw-{self.name}-{len(self._started)}",
                             daemon=True)
        t.start()
        self._started.append(t)

    def _work(self) -> None:
        """A worker's life. A job, and what its closures hold, goes as soon as it ran: held
        while the thread waits for the next (a job's local), the last checkpoint's packed
        parts, 16 MiB for a 190,000-path index, stayed in the process until another job
        came, which on a quiet watcher is never."""
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            job()
            job = None

    def _hand_back(self, done: Callable[[], None]) -> None:
        """From a worker: queue `done` for the loop, waking it only if no wake-up is on its
        way already (jobs that finish together cost the loop one wake-up, not one each)."""
        with self._lock:
            self._done.append(done)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.wake(self._run_done)

    def _run_done(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for fn in done:
            _run_isolated(fn)

    def shutdown(self) -> None:
        """No new jobs; each thread ends once its current job returns (a job stuck in a
        syscall is not waited for: the process is on its way out, and they are daemons)."""
        for _ in self._started:
            self._jobs.put(None)

    def stats(self) -> dict[str, Any]:
        return {"threads": len(self._started), "limit": self.limit,
                "in_flight": self.in_flight, "peak": self.peak, "done": self.done,
                "refused": self.refused}
