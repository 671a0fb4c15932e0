"""Run one measurement in a fresh child process; return its result and the child's peak resident memory.

A process's peak only grows, so each training size and each deployment model gets its own process and
peaks never mix. The peak is read from /proc/self/status (VmHWM), not from getrusage's ru_maxrss: on
Linux a child's ru_maxrss starts at its parent's peak (the parent's pages count until exec replaces
them), so a child of an 800 MB parent reports 800 MB even if it only ever used 15 MB.
"""
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import warnings
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is


_context = multiprocessing.get_context("spawn")  # a fresh interpreter per child: imports count in its peak


def preload(modules: list) -> None:
    """From now on, children fork from one server process that imported `modules` once: seconds instead
    of an import of torch and fairseq per child (for --quick). Their peaks then include every preloaded
    library, so compare peaks only between runs of the same mode."""
    global _context
    _context = multiprocessing.get_context("forkserver")
    _context.set_forkserver_preload(modules)
    multiprocessing.forkserver.ensure_running()  # starts importing now, while the caller goes on


def _measured(fn, args, cwd):
    os.chdir(cwd)  # a forkserver's children start in the server's directory, not the caller's
    # the child prints only our numbers: libraries' logs and warnings are off, errors still raise
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    return fn(*args), peak_rss_mb()


def in_child(fn, *args) -> dict:
    """fn(*args) (a dict) in a fresh child process, with "peak_rss_mb" added. Never forked from this
    process: a child would start with its imports, threads and memory."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=_context) as pool:
        result, peak = pool.submit(_measured, fn, args, os.getcwd()).result()
    return {**result, "peak_rss_mb": round(peak, 1)}
