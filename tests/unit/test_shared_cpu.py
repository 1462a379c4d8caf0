"""The shared-CPU warning: torch's threads outnumbering the idle cores is said, never silently changed."""

from __future__ import annotations

import os

from transferops.stages.common import warn_shared_cpu


def test_a_busy_cpu_with_several_threads_is_warned_about(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.2, 5.0, 4.0))
    msg = warn_shared_cpu(2)
    assert msg is not None and "load 5.2 on 2 cores" in msg and "base.num_threads=1" in msg
    assert warn_shared_cpu(1) is None  # one thread: nothing to contend
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert warn_shared_cpu(2) is None  # idle cores
