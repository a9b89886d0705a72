"""Compress every PEFT adapter under a folder: loraquant.compress_many, `loraquant batch`.

Every folder strictly under ROOT that holds adapter_config.json is an adapter (folders
inside an adapter are searched too: PEFT saves extra adapters in subfolders; links to
folders are not followed); its
output is OUT/<its path relative to ROOT>.lqa, written as `loraquant compress` writes
it (same function, same bytes) and atomically (temporary file, fsync, rename).

The job resumes. An existing output is skipped when it loads as a valid file (sizes,
CRC-32, every module header checked) and records the same compression options
(its "compress_options"); a corrupt or truncated output, or one made with other
options or by a loraquant that did not record them, is compressed again. A change of
the source is not detected: delete the output to redo it.

With a calibration (a .lqc file of the adapters' base model, `loraquant calibrate`),
every adapter is compressed output-aware, as `loraquant compress --calibration` does;
the file is read once per process (Ray: once per worker, from its path, so it must be
on storage every worker reads) and its base name is part of the options an output
records, so outputs made without it (or with another base's) are compressed again.

A broken adapter becomes a failed Outcome with a one-line message and the others go
on. Adapters run one after another (workers=1), on a pool of `workers` threads (the
C++ core releases the GIL; bench/batch_bench.py measured threads against processes),
or as Ray tasks (loraquant.ray_batch, imported only then).
"""
from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ._api import DEFAULT_DAMPING, MAX_THREADS, _progress, default_refit, resolve_options
from ._core import FormatError
from . import _validate as V
from .adapter_file import load
from .calibration import Calibration
from .peft_io import BIN_FILE, CONFIG_FILE, SAFETENSORS_FILE, _record, compress_peft_file

SUFFIX = ".lqa"
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
#: errors of the library and of its inputs: reported with their message alone
LIBRARY_ERRORS = (FormatError, ValueError, TypeError, OSError, MemoryError, ImportError)


@dataclass(frozen=True)
class Job:
    """One adapter to compress; plain data, so that a Ray task can take it."""
    name: str            # path relative to ROOT, '/'-separated
    source: str          # the adapter folder
    output: str          # OUT/<name>.lqa
    options: dict        # keyword options of compress_peft ("calibration": a .lqc path,
                         # or a Calibration when the job runs in this process)
    record: dict         # what the output must record to count as up to date
    threads: int | None  # threads inside the adapter (None: one per CPU)


@dataclass(frozen=True)
class Outcome:
    """What became of one adapter.

    bytes_before is the size of its weights file (adapter_model.safetensors or .bin),
    bytes_after that of its output file; both 0 where it failed."""
    name: str
    output: str
    status: str          # DONE, SKIPPED or FAILED
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class BatchReport:
    """The adapters done (compressed now), skipped (already up to date) and failed,
    each a list of Outcome in the order they finished."""
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    seconds: float = 0.0   # wall time of the whole job

    def add(self, outcome: Outcome) -> None:
        {DONE: self.done, SKIPPED: self.skipped, FAILED: self.failed}[outcome.status].append(outcome)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def bytes_before(self) -> int:
        """Weights files of the adapters done and skipped."""
        return sum(o.bytes_before for o in self.done + self.skipped)

    @property
    def bytes_after(self) -> int:
        """Output files of the adapters done and skipped."""
        return sum(o.bytes_after for o in self.done + self.skipped)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- finding the adapters -----------------------------------------------------------

def find_adapters(root, out=None) -> list[str]:
    """Relative paths ('/'-separated, sorted) of the folders under `root` that hold
    adapter_config.json. Symbolic links to folders are not followed (no loops, no
    adapter found twice); `out`, if it lies under `root`, is not searched."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root))
    if (root / CONFIG_FILE).is_file():
        raise ValueError(f"{root} holds {CONFIG_FILE} itself, so its output would have no "
                         f"name under OUT: give its parent folder as ROOT, or use "
                         f"`loraquant compress` for one adapter")
    skip = os.path.realpath(out) if out is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            continue
        if os.path.realpath(dirpath) == skip:
            dirnames.clear()
        elif CONFIG_FILE in filenames:
            found.append(Path(dirpath).relative_to(root).as_posix())
    return sorted(found)


def plan(root, out, *, threads=None, calibration=None, damping=DEFAULT_DAMPING,
         **options) -> list[Job]:
    """One Job per adapter under `root`; options as compress_peft, checked here once.
    calibration: None, a Calibration, or the path of a .lqc file (read here once to
    check it and name its base in the record)."""
    cal = _calibration(calibration)
    damping = V.real(damping, "damping", 1e-12, 1e6)
    refit = default_refit(options.pop("refit_rounds", None), cal, options.get("rho"))
    record = _record(resolve_options(refit_rounds=refit, **options), cal, damping)
    if cal is not None:  # a path travels as an absolute one (Ray workers' cwd differ)
        keep = cal if isinstance(calibration, Calibration) else os.path.abspath(calibration)
        options = dict(options, calibration=keep, damping=damping, refit_rounds=refit)
    names = find_adapters(root, out)
    if not names:
        raise ValueError(f"{root}: no folder under it holds {CONFIG_FILE}")
    return [Job(name, os.path.abspath(os.path.join(root, name)),
                os.path.abspath(os.path.join(out, name + SUFFIX)), options, record, threads)
            for name in names]


def _calibration(calibration):
    """A Calibration from None, a Calibration or the path of a .lqc file."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if not isinstance(calibration, (str, os.PathLike)):
        raise TypeError(f"calibration must be a Calibration or the path of a .lqc file, "
                        f"got {type(calibration).__name__}")
    st = os.stat(calibration)
    return _load_calibration(os.path.abspath(calibration), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_calibration(path: str, size: int, mtime_ns: int) -> Calibration:
    """Calibration.load, once per file version in this process (size and mtime are
    part of the key, so a rewritten file is read again)."""
    return Calibration.load(path)


# --- one adapter --------------------------------------------------------------------

def weights_size(source: str) -> int:
    for name in (SAFETENSORS_FILE, BIN_FILE):
        path = os.path.join(source, name)
        if os.path.isfile(path):
            return os.path.getsize(path)
    return 0


def up_to_date(output: str, record: dict) -> bool:
    """Whether `output` is a valid compressed file made with the options `record`."""
    if not os.path.exists(output):
        return False
    try:
        return load(output).options == record
    except FormatError:  # corrupt or truncated: compress again
        return False


def run_job(job: Job) -> Outcome:
    """Compress one adapter unless its output is up to date; never raises an Exception
    (a failure becomes a FAILED Outcome naming it)."""
    t0 = time.perf_counter()
    try:
        before = weights_size(job.source)
        if up_to_date(job.output, job.record):
            return Outcome(job.name, job.output, SKIPPED, before,
                           os.path.getsize(job.output), time.perf_counter() - t0)
        os.makedirs(os.path.dirname(job.output), exist_ok=True)
        options = dict(job.options)
        if "calibration" in options:
            options["calibration"] = _calibration(options["calibration"])
        compress_peft_file(job.source, job.output, threads=job.threads, **options)
        return Outcome(job.name, job.output, DONE, before, os.path.getsize(job.output),
                       time.perf_counter() - t0)
    except LIBRARY_ERRORS as e:
        error = one_line(e)
    except Exception as e:  # a bug met on one adapter must not stop the others
        error = f"{type(e).__name__}: {one_line(e)}"
    return Outcome(job.name, job.output, FAILED, seconds=time.perf_counter() - t0,
                   error=error)


# --- many adapters ------------------------------------------------------------------

def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_local(jobs: list[Job], workers: int, on_outcome: Callable[[Outcome], None]) -> None:
    """Every job in this process: one after another, or on `workers` threads. If
    interrupted (Ctrl-C), the adapters under way finish and no other starts."""
    if workers == 1:
        for job in jobs:
            on_outcome(run_job(job))
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in as_completed([pool.submit(run_job, job) for job in jobs]):
            on_outcome(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def compress_many(root, out, *, bits=None, rho=None, high_bits=None, group_size=128,
                  calibration=None, damping=DEFAULT_DAMPING, workers=None, ray=None,
                  progress=False,
                  on_outcome: Callable[[Outcome], None] | None = None) -> BatchReport:
    """Compress every PEFT adapter folder under `root` into `out` (see the module
    docstring for names, resuming and failures) and return a BatchReport.

    Options as compress_peft; calibration: a Calibration or the path of a .lqc file
    of the adapters' base model (with ray: a path, on storage the workers read), and
    damping its ridge (see compress_adapter).
    workers: adapters compressed at once (default 1; each
    gets cpus // workers threads of its own). ray: None runs here; "local" starts a
    local Ray cluster of `workers` CPUs (default all) for the job; any other string
    is the address of an existing cluster ("auto": the one this machine belongs to),
    where `workers` caps the tasks in flight. progress shows a bar over the
    adapters; on_outcome(Outcome) is called as each adapter finishes.
    """
    if workers is not None:
        workers = V.integer(workers, "workers", 1, MAX_THREADS)
    if ray is not None and (not isinstance(ray, str) or not ray):
        raise ValueError(f"ray must be None, 'local' or a cluster address, got {ray!r}")
    if ray is not None and isinstance(calibration, Calibration):
        raise ValueError("with ray, give the calibration as the path of its .lqc file "
                         "(on storage every worker reads), not as a Calibration")
    options = dict(bits=bits, rho=rho, high_bits=high_bits, group_size=group_size)
    n_local = workers or 1
    threads = 1 if ray is not None else max(1, cpus() // n_local)
    if ray is None and calibration is not None:
        calibration = _calibration(calibration)  # read once, shared by the threads
    jobs = plan(root, out, threads=threads, calibration=calibration, damping=damping, **options)
    os.makedirs(out, exist_ok=True)

    t0 = time.perf_counter()
    report = BatchReport()
    bar = _progress(len(jobs), progress, desc="adapters", unit="adapter")

    def record(outcome: Outcome) -> None:
        report.add(outcome)
        bar.update(1)
        bar.set_postfix(done=len(report.done), skipped=len(report.skipped),
                        failed=len(report.failed), refresh=False)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        if ray is None:
            run_local(jobs, n_local, record)
        else:
            from . import ray_batch

            ray_batch.run(jobs, ray, workers, record)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report

