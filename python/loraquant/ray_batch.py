"""Ray glue for loraquant.compress_many: each adapter one Ray task.

loraquant imports without Ray; compress_many imports this module only when given
`ray=`, and this module imports Ray only when run (install it with
`pip install 'loraquant[ray]'`). Tasks run loraquant.batch.run_job, the function
the local path runs, so results are the same files. Workers read the adapters and
write the outputs by path: on a cluster ROOT and OUT must be storage that every node
mounts at the same path, and every node needs loraquant installed. Each task takes
one CPU and compresses its adapter on one thread.

    "local"      start a Ray cluster on this machine for the job, stop it after
    an address   join that cluster ("auto": the one this machine belongs to, or
                 RAY_ADDRESS); it keeps running after the job
If this process already called ray.init, that connection is used as it is.
"""
from __future__ import annotations

from collections.abc import Callable

from .batch import FAILED, Job, Outcome, cpus, one_line, run_job

LOCAL = "local"
#: tasks exchange only paths and a few numbers: a small object store is plenty
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"--ray needs Ray, which is not installed ({one_line(e)}): "
                          f"pip install 'loraquant[ray]'") from None
    return ray


def connect(ray, address: str, workers: int | None) -> bool:
    """ray.init for `address`; True if this call started the connection (and so
    must end it)."""
    if ray.is_initialized():
        return False
    if address == LOCAL:
        ray.init(address=LOCAL, num_cpus=workers or cpus(),
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False)
    else:
        ray.init(address=address)
    return True


def run(jobs: list[Job], address: str, workers: int | None,
        on_outcome: Callable[[Outcome], None]) -> None:
    """Run every job as a Ray task, at most `workers` in flight (default: all, Ray
    schedules them on the CPUs it has); on_outcome as each one finishes."""
    ray = import_ray()
    started = connect(ray, address, workers)
    try:
        task = ray.remote(num_cpus=1)(run_job)
        todo = list(reversed(jobs))
        cap = workers or len(jobs)
        in_flight = {}
        while todo or in_flight:
            while todo and len(in_flight) < cap:
                job = todo.pop()
                in_flight[task.remote(job)] = job
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            job = in_flight.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died, or Ray failed it
                outcome = Outcome(job.name, job.output, FAILED,
                                  error=f"Ray task failed: {one_line(e)}")
            on_outcome(outcome)
    finally:
        if started:
            ray.shutdown()
