"""Whether a process of this host still runs: to tell a claim or a temporary copy left by a killed one.

A run's claim on its output folder (``timm_stim.training.runs``) and a push's temporary copy of the
weights (``timm_stim.tools.push``) record the pid that made them; once that process is gone (kill -9,
power loss) nothing of it will remove them, and the next run or push may.
"""
import os
from typing import Optional

__all__ = ['process_alive', 'process_start']


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts: it is not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):  # not a pid
        return False
    return True


def process_start(pid: int) -> Optional[str]:
    """When ``pid`` started (clock ticks since boot, from /proc), to tell it from a later process with its pid.

    Returns:
        The start time as text, or None where /proc does not tell (not Linux, or no such process).
    """
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None
