"""Starting the scripts as background processes, waiting on what they write, and finding their children."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import REPO, script_env

# Runs a script after arranging, through CRASH_AT, for the process to be SIGKILLed at a chosen moment of a save.
CRASH_DRIVER = r"""
import os
import runpy
import signal
import sys

from transformers import Trainer

point, step = os.environ["CRASH_AT"], int(os.environ.get("CRASH_STEP", "0"))


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if point == "checkpoint":  # checkpoint-<step>: the adapter is written, the optimizer and trainer state are not
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def save_optimizer_or_die(self, output_dir):
        if self.state.global_step == step:
            die()
        return save_optimizer(self, output_dir)

    Trainer._save_optimizer_and_scheduler = save_optimizer_or_die
elif point == "final_save":  # the final model is written to output_dir, its results are not
    Trainer.save_metrics = lambda self, *args, **kwargs: die()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start(
    script: str, *args: object, log: Path, env: dict[str, str] | None = None, launcher: list[str] | None = None
) -> subprocess.Popen:
    """Start ``script`` in the background, stdout and stderr to ``log`` (read it while the process runs)."""
    command = [*(launcher or [sys.executable]), str(REPO / script), *map(str, args)]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or script_env(), cwd=REPO)


def wait_for(condition: Callable[[], object], process: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; fail if the process ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def children(pid: int) -> dict[int, int]:
    """Every descendant of ``pid`` as {pid: parent pid}, read from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # the command name (field 2) may hold spaces; the parent pid follows its closing parenthesis
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = parent
                frontier.append(child)
    return found


def environment_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def crash_env(point: str, step: int = 0) -> dict[str, str]:
    return script_env() | {"CRASH_AT": point, "CRASH_STEP": str(step)}


def write_driver(directory: Path) -> Path:
    driver = directory / "crash_driver.py"
    driver.write_text(CRASH_DRIVER)
    return driver


def run_crashing(driver: Path, args: list[object], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """finetune_clm.py ``args`` under the crash driver (see CRASH_DRIVER), to its end."""
    command = [sys.executable, str(driver), str(REPO / "finetune_clm.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def kill_all(process: subprocess.Popen) -> None:
    """Clean up after a failed test: the process and everything it started."""
    for pid in [*children(process.pid), process.pid]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
