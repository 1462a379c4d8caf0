"""Start transferops CLI commands in several processes at the same instant.

    python -m tests.services.together BARRIER NAME ROUNDS -- register --params p.yaml

The process imports what the command needs first (torch, mlflow, the stage: seconds, and uneven under load),
then for each round marks itself ready (``BARRIER/<NAME>.<round>.ready``) and waits for ``BARRIER/go.<round>``
before running ``transferops.cli.main(args)``. :func:`release` is the test's side: it waits until every
process is ready and creates the go file, so all of them call MLflow within a few milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"barrier: {path} never appeared")
        time.sleep(0.001)


def start(barrier: Path, names: list[str], rounds: int, argv: dict[str, list[str]], env, cwd) -> list:
    """One process per name, each running ``transferops <argv[name]>`` ``rounds`` times behind the barrier."""
    barrier.mkdir(parents=True, exist_ok=True)
    # this module runs as ``-m tests.services.together`` from any folder: the repo root goes on its path
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.services.together", str(barrier), name, str(rounds), "--", *argv[name]],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]


def release(barrier: Path, names: list[str], round_: int, procs: list, timeout: float = 300) -> None:
    """Wait until every process is ready for ``round_``, then let them all go at once."""
    _wait_all(barrier, names, f"{round_}.ready", procs, timeout)
    (barrier / f"go.{round_}").touch()


def wait_done(barrier: Path, names: list[str], round_: int, procs: list, timeout: float = 600) -> None:
    """Wait until every process has finished ``round_``."""
    _wait_all(barrier, names, f"{round_}.done", procs, timeout)


def _wait_all(barrier: Path, names: list[str], suffix: str, procs: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        marker = barrier / f"{name}.{suffix}"
        while not marker.exists():
            failed = [p for p in procs if p.poll() is not None and p.returncode != 0]
            if failed:
                raise AssertionError(f"a process failed: {failed[0].communicate()[1][-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker} never appeared")
            time.sleep(0.005)


def main(argv: list[str]) -> int:
    barrier, name, rounds, sep, *args = argv
    assert sep == "--", argv
    import mlflow  # noqa: F401  (the slow imports, before the barrier)

    import transferops.cli

    if args[0] != "registry":  # commands that train, score or log models
        import mlflow.pytorch  # noqa: F401
        import torch  # noqa: F401

        import transferops.stages.register  # noqa: F401

    for round_ in range(int(rounds)):
        (Path(barrier) / f"{name}.{round_}.ready").touch()
        _wait_for(Path(barrier) / f"go.{round_}", timeout=300)
        status = transferops.cli.main(args)
        if status:
            return status
        (Path(barrier) / f"{name}.{round_}.done").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
