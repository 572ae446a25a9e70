"""One worker thread that runs the page's renders; the latest request wins.

Every MLX call happens on that thread (MLX streams belong to the thread that
made them): loading a model and other quick requests go through ``call``.

Submitting a job cancels the one running (at its next denoising step) and
replaces any still waiting, so a slider that moves fast costs one render at a
time and the page always ends on its latest settings.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .recipe_text import PageError

KEEP = 64  # finished jobs kept for the page to read


@dataclass
class Job:
    """A render the page asked for, and what it has come to."""

    id: str
    kind: str
    work: Callable[["Job"], Dict[str, Any]]
    status: str = "queued"  # queued, running, done, cancelled, error
    phase: str = ""
    step: int = 0
    total: int = 0
    result: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, str]] = None
    seconds: Optional[float] = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, phase: str, step: int, total: int) -> None:
        """Record progress; raises Cancelled when the job was cancelled."""
        from .render import Cancelled

        self.phase, self.step, self.total = phase, step, total
        if self.cancel.is_set():
            raise Cancelled()

    def public(self) -> Dict[str, Any]:
        """What the page reads about this job."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "phase": self.phase,
            "step": self.step,
            "total": self.total,
            "result": self.result,
            "error": self.error,
            "seconds": self.seconds,
        }


class Worker:
    """Runs jobs one at a time on a daemon thread."""

    def __init__(self):
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._waiting: Optional[Job] = None
        self._running: Optional[Job] = None
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._calls: List[Tuple[Callable[[], Any], threading.Event, list]] = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="studio")
        self._thread.start()

    def submit(self, kind: str, work: Callable[[Job], Dict[str, Any]]) -> Job:
        """Queue work, cancelling the running job and dropping the waiting one."""
        job = Job(str(next(self._ids)), kind, work)
        with self._cond:
            if self._waiting is not None:
                self._waiting.status = "cancelled"
            if self._running is not None:
                self._running.cancel.set()
            self._waiting = job
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:
                self._jobs.popitem(last=False)
            self._cond.notify()
        return job

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the worker thread before the next job; its result or its exception."""
        done, box = threading.Event(), []
        with self._cond:
            self._calls.append((fn, done, box))
            self._cond.notify()
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def get(self, job_id: str) -> Optional[Job]:
        with self._cond:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Optional[Job]:
        """Cancel a job: waiting ones at once, a running one at its next step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel.set()
            if job is self._waiting:
                self._waiting = None
                job.status = "cancelled"
            return job

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once nothing is running or waiting (for tests and shutdown)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._waiting is not None or self._running is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._calls:
                    self._cond.wait()
                calls, self._calls = self._calls, []
            for fn, done, box in calls:
                try:
                    box.append((True, fn()))
                except BaseException as err:  # handed to the caller's thread
                    box.append((False, err))
                done.set()
            with self._cond:
                if self._waiting is None:
                    continue
                job, self._waiting = self._waiting, None
                self._running = job
                job.status = "running"
            self._run(job)
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def _run(self, job: Job) -> None:
        from ..cli import CliError
        from ..pulse import PulseError
        from .render import Cancelled

        t0 = time.perf_counter()
        try:
            job.result = job.work(job)
            job.status = "done"
        except Cancelled:
            job.status = "cancelled"
        except PageError as err:
            job.error = {"field": err.field, "message": str(err)}
            job.status = "error"
        except (ValueError, OSError, CliError, PulseError) as err:  # RecipeError, ...
            from .recipe_text import section_of

            job.error = {"field": section_of(str(err)), "message": str(err)}
            job.status = "error"
        except Exception as err:  # a bug, not bad input: say so, keep the server up
            traceback.print_exc()
            job.error = {
                "field": "",
                "message": f"internal error ({type(err).__name__}: {err}); "
                "the server log has the details",
            }
            job.status = "error"
        job.seconds = time.perf_counter() - t0
