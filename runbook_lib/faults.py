"""Fault-injection points for the reliability tests (inactive unless RUNBOOK_FAULT is set).

``RUNBOOK_FAULT=after_apply:sleep:5`` sleeps 5 s at that point (so a test can kill the process or
terminate its connection there); ``RUNBOOK_FAULT=after_apply:raise`` raises. ``point@N`` fires only at the N-th
time the process reaches the point (online mode reaches ``after_apply`` once per batch, ``between_batches``
between two batches). Production runs never set it.
"""

from __future__ import annotations

import os
import time

POINTS = ("before_lock", "after_lock", "after_apply", "before_commit", "after_commit")
#: reached only by an online (batched) execute, between two batches' transactions
ONLINE_POINTS = ("between_batches",)
#: how many times this process reached each point (for ``point@N``)
_REACHED: dict[str, int] = {}
#: a procedure's own points are its ``fault_points`` (full rollback stops between two DROP statements there)


class InjectedFault(RuntimeError):
    pass


def hit(point: str) -> None:
    spec = os.environ.get("RUNBOOK_FAULT")
    if not spec:
        return
    reached = _REACHED[point] = _REACHED.get(point, 0) + 1
    for item in spec.split(","):
        parts = item.split(":")
        name, _, nth = parts[0].partition("@")
        if name != point or (nth and int(nth) != reached):
            continue
        action = parts[1] if len(parts) > 1 else "raise"
        if action == "sleep":
            marker = os.environ.get("RUNBOOK_FAULT_MARKER")
            if marker:
                with open(marker + ".tmp", "w") as f:
                    f.write(f"{point} {os.getpid()}")
                os.replace(marker + ".tmp", marker)  # readers never see a half-written marker
            time.sleep(float(parts[2]) if len(parts) > 2 else 5.0)
        elif action == "raise":
            raise InjectedFault(f"injected fault at {point}")
