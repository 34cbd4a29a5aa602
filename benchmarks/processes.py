"""Parent side of the child processes: start a server child, wait for its port, stop it.

Every child is ``python -m benchmarks.<module>`` run from the repository root, so it imports
this checkout's ``messages_mw`` and nothing is shared with the parent but the command line.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .serving import PORT_LINE, UNAVAILABLE_LINE

REPO_ROOT = Path(__file__).resolve().parents[1]
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


class ChildFailed(RuntimeError):
    """A child exited or timed out before doing its job; the message carries its stderr tail."""


class ChildUnavailable(RuntimeError):
    """A child reported it cannot run here (e.g. the gateway is not importable yet)."""


@dataclass(frozen=True)
class Server:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace").strip()[-2000:]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_announcement(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], _START_TIMEOUT)
    return process.stdout.readline().decode().strip() if ready else ""


@contextmanager
def running_server(module: str, *args: str, cpu: int) -> Iterator[Server]:
    """Run ``python -m benchmarks.<module> --cpu <cpu> <args>`` until the block exits."""
    command = [sys.executable, "-m", f"benchmarks.{module}", "--cpu", str(cpu), *args]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            line = _read_announcement(process)
            kind, _, value = line.partition(" ")
            if kind == UNAVAILABLE_LINE:
                raise ChildUnavailable(value)
            if kind != PORT_LINE:
                _stop(process)
                raise ChildFailed(f"{module} {' '.join(args)} did not start: {_tail(stderr)}")
            yield Server(process.pid, int(value))
        finally:
            _stop(process)


def run_json_child(module: str, *args: str, cpu: int, timeout: float) -> object:
    """Run ``python -m benchmarks.<module> ...`` that prints one JSON document; return it."""
    command = [sys.executable, "-m", f"benchmarks.{module}", "--cpu", str(cpu), *args]
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env=_child_env(), capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"{module} ran past {timeout:.0f} s") from exc
    if completed.returncode != 0:
        raise ChildFailed(f"{module} failed: {completed.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(completed.stdout)
