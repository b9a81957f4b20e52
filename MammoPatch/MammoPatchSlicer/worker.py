"""One ``mammopatch predict`` run in a worker process, without Qt: the GUI drives it by calling
:meth:`WorkerProcess.poll` from a timer (``qt.QTimer.singleShot`` in Slicer), a script or a test
by calling :meth:`WorkerProcess.wait`; both end in the same single ``on_exit`` call.

Why not ``slicer.util.launchConsoleProcess`` (Base/Python/slicer/util.py: v5.6.2 line 3739,
v5.8.1 3787, v5.10.0 3879, main 4203): it opens the pipe in text mode with the locale's codec
(a UnicodeDecodeError ends a reader; Slicer's own logProcessOutput catches it, v5.6.2 line
3805) and starts the process in Slicer's process group, so killing the PythonSlicer launcher leaves the real Python running.
Here the process is started the same way (the environment the caller gives, hidden console on
Windows) but in its own process group / session, its output decoded as UTF-8 with
replacement, and Cancel's kill takes the whole tree (as SlicerMONAIAuto3DSeg does).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

logger = logging.getLogger(__name__)

#: Seconds between Cancel (the cancel file) and killing the process tree.
KILL_GRACE_S = 10.0


def _popen(command: List[str], environment: Optional[dict]) -> subprocess.Popen:
    kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
                  encoding="utf-8", errors="replace", bufsize=1)
    if os.name == "nt":
        info = subprocess.STARTUPINFO()
        info.dwFlags = subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0
        kwargs.update(startupinfo=info, creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
    else:
        kwargs.update(start_new_session=True)  # its own process group: killpg reaches its children
    return subprocess.Popen(command, **kwargs)


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill a process and everything it started (PythonSlicer is a launcher that starts the real
    Python as a child)."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, timeout=30)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, subprocess.SubprocessError):
        proc.kill()


class WorkerProcess:
    """A worker process, its output lines and its end.

    ``on_line(line)`` is called for every output line, in order, and ``on_exit(exit_code)``
    exactly once after the last line, both from the thread that calls :meth:`poll` (the GUI
    thread). An exception in either is logged and does not stop the run's bookkeeping; lines
    read before the process ended are never dropped."""

    def __init__(self, command: List[str], environment: Optional[dict], cancel_file: str,
                 on_line: Callable[[str], None], on_exit: Callable[[int], None]) -> None:
        self.command = list(command)
        self.cancel_file = cancel_file
        self.on_line, self.on_exit = on_line, on_exit
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.exit_code: Optional[int] = None
        self.cancel_requested = False
        self.finished = False
        self._cancel_time: Optional[float] = None
        self._finish_lock = threading.Lock()
        if os.path.exists(cancel_file):
            os.unlink(cancel_file)
        self.proc = _popen(self.command, environment)
        self.thread = threading.Thread(target=self._read, name="MammoPatch worker reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        """Reader thread: every line into the queue; the exit code set however reading ends."""
        try:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\r\n"))
        except Exception as exc:  # noqa: BLE001 - a broken pipe must not leave the run open forever
            self.lines.put(f"error: reading the worker's output failed ({type(exc).__name__}: {exc})")
        finally:
            try:
                self.exit_code = self.proc.wait()
            except Exception:  # noqa: BLE001
                self.exit_code = -1

    @property
    def running(self) -> bool:
        return not self.finished

    def _drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            try:
                self.on_line(line)
            except Exception:  # noqa: BLE001 - a display error must not lose the following lines
                logger.exception("MammoPatch: handling a worker line failed: %r", line)

    def poll(self) -> bool:
        """Hand over the lines read so far; when the process has ended and every line is handed
        over, call ``on_exit`` (once). Kills the tree when a cancel's grace time is over.
        Returns True while the run goes on (call again later)."""
        if self.finished:
            return False
        if self._cancel_time is not None and time.monotonic() - self._cancel_time > KILL_GRACE_S:
            kill_process_tree(self.proc)
        self._drain()
        if self.exit_code is None or self.thread.is_alive():
            return True
        self._drain()  # lines queued between the first drain and the reader's end
        with self._finish_lock:
            if self.finished:
                return False
            self.finished = True
        try:
            self.on_exit(self.exit_code)
        except Exception:  # noqa: BLE001
            logger.exception("MammoPatch: finishing the run failed")
            raise
        return False

    def cancel(self) -> None:
        """Ask the worker to stop (it checks the cancel file between batches of windows); the
        process tree is killed if it is still running KILL_GRACE_S later (checked by poll)."""
        if self.finished or self.cancel_requested:
            return
        self.cancel_requested = True
        self._cancel_time = time.monotonic()
        try:
            with open(self.cancel_file, "w"):
                pass
        except OSError:
            kill_process_tree(self.proc)

    def kill(self) -> None:
        self.cancel_requested = True
        kill_process_tree(self.proc)

    def wait(self, timeout_s: Optional[float] = None, idle: Optional[Callable[[], None]] = None,
             interval_s: float = 0.05) -> None:
        """Block until the run has ended and ``on_exit`` has run (``idle`` is called between
        polls, e.g. slicer.app.processEvents)."""
        start = time.monotonic()
        while self.poll():
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                self.kill()
                timeout_s = None
            if idle is not None:
                idle()
            time.sleep(interval_s)


def python_for_worker() -> str:
    """PythonSlicer in Slicer (its launcher sets up Slicer's Python environment), the running
    interpreter elsewhere."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable
