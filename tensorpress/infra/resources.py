"""Wall time and peak resident memory per stage, for the report; the memory a run may still take."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tensorpress.errors import TensorpressError


def _reset_peak() -> bool:
    """Linux lets a process reset its own high-water mark (VmHWM) through clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset (VmHWM), falling back to the process-lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StageMeter:
    """`with meter.stage("compress"): ...` records seconds and peak RSS of each stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.overall_peak = 0

    @contextmanager
    def stage(self, name: str):
        before = peak_rss_bytes()
        self.overall_peak = max(self.overall_peak, before)
        _reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            peak = peak_rss_bytes()
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), peak)
            self.overall_peak = max(self.overall_peak, peak)


def available_bytes() -> int:
    """Memory a run may still allocate: the OS's available memory, capped by RLIMIT_AS headroom."""
    import psutil

    avail = psutil.virtual_memory().available
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        avail = min(avail, max(0, soft - psutil.Process().memory_info().vms))
    return avail


def check_fits(nbytes: int, culprit: Callable[[], str]) -> None:
    """Refuse, before allocating, a run whose estimated peak exceeds what is available.

    `culprit()` names the file and key responsible; it is only computed when the check fails.
    """
    avail = available_bytes()
    if nbytes > avail:
        raise TensorpressError(
            f"{culprit()}: needs ~{nbytes / 2**30:,.1f} GiB of memory, more than the {avail / 2**30:,.1f} GiB available"
        )


@contextmanager
def stage(meter: StageMeter, progress, name: str):
    """Time a stage for the report and say when it starts and ends (a plain log line off a terminal)."""
    progress.log(f"{name}: start")
    t0 = time.perf_counter()
    with meter.stage(name):
        yield
    progress.log(f"{name}: done in {time.perf_counter() - t0:.1f}s")
