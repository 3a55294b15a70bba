"""Run a GANJob on Ray Train: the embedded local Ray by default, or a running cluster.

Driver side only: pre-flight checks that Ray would otherwise turn into an endless wait
(workers that can never be placed), resume/restart decisions, the live display, Ctrl-C.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml

from ganops import jobdir, rayinit, storage
from ganops.data import ImageInfo
from ganops.errors import JobFailedError, ResourceError, UserError, user_error_in
from ganops.spec import dump
from ganops.spec.models import GANJob, model_for_resume
from ganops.timings import mark

Echo = Callable[[str], None]


@dataclass
class RunResult:
    job_uri: str
    epochs_done: int
    epochs_requested: int
    step: int
    latest_checkpoint: str | None
    samples_uri: str
    gif_uri: str | None
    resumed_from: str | None
    archived_to: str | None
    stopped_early: bool
    elapsed_s: float
    trained: bool = True
    restarts: int = 0
    """Times the workers were restarted after one was lost (``spec.scaling.max_failures``)."""
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    mlflow_hint: str | None = None


def _compatible(previous: dict[str, Any], job: GANJob) -> list[str]:
    """Fields whose change makes a checkpoint unusable (the weights would not load)."""
    now = job.to_dict()["spec"]
    prev = previous.get("spec", {})
    problems = []
    model, prev_model = model_for_resume(now["model"]), model_for_resume(prev.get("model", {}))
    if prev_model != model:
        problems += [f"spec.model.{k}" for k in sorted(k for k in model if prev_model.get(k) != model[k])]
    for k in ("dataset", "image_size", "channels"):
        if prev.get("data", {}).get(k) != now["data"][k]:
            problems.append(f"spec.data.{k}")
    return problems


def default_resources(job: GANJob, embedded: bool) -> dict[str, float] | None:
    """An even share of this machine's CPUs per worker on the embedded Ray.

    Ray caps each worker's torch threads at the CPUs it reserves (OMP_NUM_THREADS), so the
    default of one CPU would leave cores idle on a one- or two-worker laptop run.
    """
    scaling = job.spec.scaling
    if scaling.resources_per_worker is not None:
        return dict(scaling.resources_per_worker)
    if not embedded:
        return None
    cpus = os.cpu_count() or 1
    return {"CPU": float(max(1, cpus // scaling.num_workers))}


def check_resources(job: GANJob, resources: dict[str, float] | None) -> None:
    """Refuse at once when the workers can never be placed: Ray alone would wait forever."""
    scaling = job.spec.scaling
    per_worker = dict(resources or {"CPU": 1.0})
    if scaling.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    short = rayinit.shortfall(per_worker, scaling.num_workers)
    if short is None:
        return
    if short.per_node:
        raise ResourceError(f"spec.scaling.resources_per_worker: {short.describe(per_worker)}")
    shown = ", ".join(f"{k}: {v:g}" for k, v in per_worker.items())
    hint = "set spec.scaling.use_gpu=false or " if short.resource == "GPU" else ""
    raise ResourceError(
        f"spec.scaling: {scaling.num_workers} workers × {{{shown}}} need {short.resource} {short.need:g}, "
        f"but the Ray cluster has {short.resource} {short.have:g} in all "
        f"({hint}lower spec.scaling.num_workers or spec.scaling.resources_per_worker)"
    )


@contextmanager
def _ctrl_c_stops(control: Any, echo: Echo) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: workers write a checkpoint and stop. Second: abort at once.

    SIGTERM is how ``ray job stop`` / ``ganops cancel --target ray`` (and Kubernetes) stop
    a driver; it is handled like the first Ctrl-C so that a cancelled job keeps its work.
    Ray sends SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default; the ray target asks
    for more per job), so the checkpoint must be written within that grace period.
    """
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}
    pressed = {"n": 0}

    def handler(signum: int, _frame: Any) -> None:
        pressed["n"] += 1
        if pressed["n"] > 1:
            for s, h in previous.items():
                signal.signal(s, h)
            raise KeyboardInterrupt
        again = "Ctrl-C again" if signum == signal.SIGINT else "SIGTERM received; a second signal"
        echo(f"\nstopping: the workers write a checkpoint first ({again} to abort without one)")
        control.request_stop.remote()

    try:
        for s in signals:
            signal.signal(s, handler)
    except ValueError:  # not the main thread (e.g. under a test runner's thread)
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _fit_off_main_thread(trainer: Any) -> Any:
    """Run ``trainer.fit()`` in a thread and wait for it on the main thread.

    On the main thread, Ray Train installs its own SIGINT handler that aborts the run
    without a checkpoint; off it, ours stays: the first Ctrl-C checkpoints and stops.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            box["error"] = e

    thread = threading.Thread(target=target, name="ganops-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)  # short waits keep the main thread responsive to signals
    if "error" in box:
        raise box["error"]
    return box.get("result")


@dataclass
class _Start:
    """Where a submit starts from: the job directory, what was moved aside, what to resume."""

    jd: jobdir.JobDir
    archived: str | None
    latest: jobdir.CheckpointInfo | None
    restarts: int = 0
    """Worker-group restarts Ray Train made (lost workers), once training has run."""


def run(
    job: GANJob,
    info: ImageInfo,
    *,
    address: str | None = None,
    restart: bool = False,
    restart_token: str | None = None,
    show_progress: bool = True,
    echo: Echo = print,
) -> RunResult:
    """(1) decide where to start (restart, resume, or nothing to do), (2) open the MLflow run
    while Ray starts, (3) train on Ray Train with the live display and Ctrl-C handling,
    (4) close the run and say where everything went."""
    t0 = time.time()
    mark("driver.submit")  # the command's imports, spec load and pre-flight are behind us
    from ganops import tracking

    named = job.spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if named:  # before the job directory or Ray exist (the server's reachability: open_run, as Ray starts)
        tracking.check_backend(named)
    from ganops.nets import size  # torch: the driver imports it anyway, through the loop

    size.check_job(job, info, address)  # before anything is created; each worker checks its node too
    start = _starting_point(job, restart, echo, restart_token)
    if start.latest is not None and start.latest.epoch >= job.spec.train.epochs:
        return _result(start.jd, job, start.latest, None, start.archived, False, t0, trained=False)
    storage.write_bytes(start.jd.root.child(jobdir.SPEC_FILE), dump(job).encode())
    run_ref, resources = _open_run_while_ray_starts(job, start.jd, info, address, echo)
    from ganops import run_note

    status, latest_after, stopped = "FAILED", None, False
    try:
        latest_after = _train(job, info, start, run_ref, resources, t0, show_progress, echo)
        stopped = latest_after is not None and latest_after.epoch < job.spec.train.epochs
        # KILLED marks a run stopped early: the next submit resumes it and sets it RUNNING.
        status = "KILLED" if stopped else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # The description tells how the run ended: written before the run is marked ended.
        run_note.update(run_ref, job, start.jd, info, status, lambda m: echo(f"warning: {m}"))
        try:
            tracking.close_run(run_ref, status)
        except Exception as e:  # noqa: BLE001 - never mask the run's own outcome
            echo(f"warning: could not mark MLflow run {run_ref.run_id} {status}: {e}")
        mark("driver.mlflow_close")
    result = _result(start.jd, job, latest_after, start.latest, start.archived, stopped, t0)
    result.restarts = start.restarts
    result.mlflow_run_id = run_ref.run_id
    result.tracking_uri = tracking.redact(run_ref.tracking_uri)
    result.mlflow_hint = tracking.ui_address_hint(run_ref, job.spec.storage)
    return result


def _starting_point(job: GANJob, restart: bool, echo: Echo, restart_token: str | None = None) -> _Start:
    """--restart moves the old run aside (once per ``restart_token`` when one is given);
    otherwise the newest complete checkpoint, if the spec can load it (a different network
    or dataset cannot), is where training resumes."""
    spec = job.spec
    jd = jobdir.JobDir(spec.storage, job.name)
    archived = None
    if restart and restart_token and jd.restart_token() == restart_token:
        echo(f"restart: this submission already started {job.name} over (a retry): resuming it")
    elif restart and jd.exists():
        archived = jd.archive()
        echo(f"restart: the previous run was moved to {archived}")
    storage.check_writable(jd.root)
    if restart and restart_token:
        jd.write_restart_token(restart_token)
    _set_aside_unusable_ray_record(jd, echo)
    latest = jd.latest_checkpoint()
    if latest is None:
        return _Start(jd, archived, None)
    prev = yaml.safe_load(storage.read_bytes(storage.locate(latest.uri).child(jobdir.SPEC_FILE)))
    changed = _compatible(prev, job)
    if changed:
        raise UserError(
            f"{latest.uri} was written with a different {', '.join(changed)}; its weights cannot be "
            f"resumed with this spec. Use --restart to start over (the old run is kept)."
        )
    if latest.epoch >= spec.train.epochs:
        echo(
            f"{job.name}: already trained {latest.epoch}/{spec.train.epochs} epochs "
            f"({latest.uri}); raise spec.train.epochs to continue, or --restart"
        )
    else:
        where = f"epoch {latest.epoch}" + (f", batch {latest.batch}" if latest.batch else "")
        echo(f"resuming {job.name} from {latest.name} ({where}) → {spec.train.epochs} epochs")
    return _Start(jd, archived, latest)


# Ray Train's record of the checkpoints it was told about, in the run directory.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def _set_aside_unusable_ray_record(jd: jobdir.JobDir, echo: Echo) -> None:
    """Move Ray Train's checkpoint record aside when Ray would refuse to start with it.

    Ray Train fails the whole run (CheckpointManagerInitializationError) when its record
    names a checkpoint directory that is gone (one deleted by hand, or lost with a disk) or
    was written by another Ray version (an upgrade). ganops resumes from the newest
    complete checkpoint by its marker, not from Ray's record, so the record can go: Ray
    starts a new one and only stops pruning (spec.checkpoint.keep) the checkpoints it no
    longer knows about."""
    import ray

    loc = jd.checkpoints.child(RAY_SNAPSHOT)
    try:
        record = json.loads(storage.read_bytes(loc))
    except (FileNotFoundError, OSError, ValueError):
        return  # none (a new job), or unreadable: Ray says so itself
    names = [r.get("checkpoint_dir_name") for r in record.get("checkpoint_results", []) if isinstance(r, dict)]
    missing = [n for n in names if n and not storage.exists(jd.checkpoints.child(n))]
    why = None
    if record.get("ray_version") != ray.__version__:
        why = f"it was written by Ray {record.get('ray_version')}, this is Ray {ray.__version__}"
    elif missing:
        why = f"it names {len(missing)} checkpoint(s) no longer in storage ({', '.join(missing[:3])})"
    if why is None:
        return
    aside = jd.checkpoints.child(f"{RAY_SNAPSHOT}.unusable-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    storage.write_bytes(aside, json.dumps(record).encode())
    loc.fs.delete_file(loc.path)
    echo(
        f"warning: Ray Train's checkpoint record is set aside ({why}); resuming from the newest "
        f"complete checkpoint, and checkpoints older than this run are no longer pruned (moved to {aside.uri})"
    )


def _open_run_while_ray_starts(
    job: GANJob, jd: jobdir.JobDir, info: ImageInfo, address: str | None, echo: Echo
) -> tuple[Any, dict[str, float] | None]:
    """The MLflow run (opened or continued) and the resources each worker reserves.

    Opening the run (importing mlflow, creating a new store's tables, logging the params)
    and starting Ray take seconds each and need nothing from each other, so the run opens
    on a thread while Ray starts (see bench/first_run.py for what it saves). Ray's and
    torch's imports are done before the thread starts: two threads importing the same large
    packages at once is where Python's import locks can raise a deadlock error. The run is
    open before any worker starts: an unreachable server still fails the submit.
    """
    from ganops import run_note, tracking

    def open_tracking() -> tracking.RunRef:
        ref = tracking.open_run(job, jd, warn=lambda m: echo(f"warning: {m}"))
        # The run's page says what is training.
        run_note.update(ref, job, jd, info, "RUNNING", lambda m: echo(f"warning: {m}"))
        mark("driver.mlflow_open")
        return ref

    # Imported here, before the thread (see above): Ray, Ray Train and, through the loop, torch.
    import ray.train.torch  # noqa: F401

    from ganops.train import loop  # noqa: F401

    mark("driver.imports")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ganops-mlflow-open") as pool:
        opening = pool.submit(open_tracking)
        embedded = rayinit.init_ray(address)
        mark("driver.ray_init")
        resources = default_resources(job, embedded)
        check_resources(job, resources)
        run_ref = opening.result()
    echo(tracking.opened_line(run_ref))
    return run_ref, resources


def _train(
    job: GANJob, info: ImageInfo, start: _Start, run_ref: Any, resources: dict[str, float] | None, t0: float,
    show_progress: bool, echo: Echo,
) -> jobdir.CheckpointInfo | None:  # fmt: skip
    """Ray Train's fit() with the live display and Ctrl-C handling; the newest checkpoint after."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ganops.train.control import JobControl
    from ganops.train.loop import MLflowRun, WorkerConfig, train_loop_per_worker
    from ganops.train.progress import ProgressDisplay

    spec = job.spec
    control_name = f"ganops-control-{job.name}-{os.getpid()}-{int(t0)}"
    # On the driver's node: a 0-CPU actor can land on any node, and on a worker's it dies with
    # that worker (a lost pod), taking the run's Ctrl-C, progress and failure record with it
    # (the e2e test that deletes a worker pod failed so: a surviving rank's ray.get raised
    # "the actor died because its node has died"; pinned, it passes).
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    control = JobControl.options(name=control_name, scheduling_strategy=here).remote()
    ckpt_loc = start.jd.checkpoints
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "worker": WorkerConfig(
                job=job.to_dict(), control=control_name, resume_from=start.latest.uri if start.latest else None,
                mlflow=MLflowRun(run_ref.tracking_uri, run_ref.run_id), env=rayinit.worker_env(),
            )
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=jobdir.CHECKPOINTS,
            storage_path=posixpath.dirname(ckpt_loc.path),
            storage_filesystem=ckpt_loc.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            # Lost workers (OOM kills, preemptions, drains) restart the group from the newest
            # checkpoint; failures no retry can fix end the next group at once (JobControl.fail).
            failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
        ),
    )  # fmt: skip
    try:
        with _ctrl_c_stops(control, echo):
            with ProgressDisplay(control, _total_steps(job, info), show_line=show_progress, echo=echo):
                _fit_off_main_thread(trainer)
        mark("driver.fit")
        _raise_recorded_failure(control)
    except KeyboardInterrupt:
        raise
    except UserError:
        raise
    except Exception as e:
        _raise_recorded_failure(control)
        user = user_error_in(e)
        if user is not None:
            raise user from None
        if isinstance(e, ray.train.TrainingFailedError):
            raise JobFailedError(_lost_workers_message(e, job, control)) from None
        raise
    finally:
        start.restarts = _restarts(control)
        ray.kill(control)
    return start.jd.latest_checkpoint()


def _raise_recorded_failure(control: Any) -> None:
    """What a worker recorded as not worth retrying (bad input, divergence), as the error."""
    import ray

    failure = ray.get(control.failure.remote())
    if failure is not None:
        raise failure["error"]


def _restarts(control: Any) -> int:
    """How often Ray Train restarted the worker group (0 when it cannot be asked)."""
    import ray

    try:
        return max(0, int(ray.get(control.attempts.remote(), timeout=10)) - 1)
    except Exception:  # noqa: BLE001 - a count for the summary, never the job's outcome
        return 0


def _lost_workers_message(e: BaseException, job: GANJob, control: Any) -> str:
    """The failure after the last allowed restart: how many, the limit, the first cause."""
    limit = job.spec.scaling.max_failures
    causes = getattr(e, "worker_failures", None) or {}
    first = next(iter(causes.values()), e)
    cause = str(first).strip().splitlines()[0][:300] if str(first).strip() else type(first).__name__
    restarts = _restarts(control)
    latest = jobdir.JobDir(job.spec.storage, job.name).latest_checkpoint()
    kept = f"; the newest complete checkpoint is kept: {latest.uri}" if latest else ""
    if any(_OUT_OF_MEMORY.search(f"{type(c).__name__}: {c}") for c in [*causes.values(), e]):
        # The same step needs the same memory on every retry: say what it is, and what to change.
        return (
            f"training failed: a worker ran out of memory ({type(first).__name__}: {cause}), {restarts + 1} time(s) "
            f"(spec.scaling.max_failures={limit}). Lower spec.train.batch_size or narrow spec.model, or give each "
            f"worker more memory (spec.scaling.resources_per_worker, spec.cluster.worker_memory){kept}"
        )
    return (
        f"training failed: workers were lost {restarts + 1} time(s), more than spec.scaling.max_failures={limit} "
        f"allows ({type(first).__name__}: {cause}){kept}. Submit again to resume from it"
    )


# How Ray and the kernel say a process ran out of memory: Ray's memory monitor raises
# OutOfMemoryError; the kernel's OOM killer leaves a SIGKILL that Ray reports as possibly OOM.
_OUT_OF_MEMORY = re.compile(r"OutOfMemory|out of memory|running low on memory|memory monitor|\bOOM\b", re.I)


def _total_steps(job: GANJob, info: ImageInfo) -> int:
    per_rank = job.spec.train.batch_size // job.spec.scaling.num_workers
    per_epoch = (info.num_images // job.spec.scaling.num_workers) // per_rank
    return per_epoch * job.spec.train.epochs


def _result(
    jd: jobdir.JobDir,
    job: GANJob,
    latest: jobdir.CheckpointInfo | None,
    resumed: jobdir.CheckpointInfo | None,
    archived: str | None,
    stopped: bool,
    t0: float,
    trained: bool = True,
) -> RunResult:
    gif = jd.samples.child(jobdir.GIF_FILE)
    return RunResult(
        job_uri=jd.uri,
        epochs_done=latest.epoch if latest else 0,
        epochs_requested=job.spec.train.epochs,
        step=latest.step if latest else 0,
        latest_checkpoint=latest.uri if latest else None,
        samples_uri=jd.samples.uri,
        gif_uri=gif.uri if storage.exists(gif) else None,
        resumed_from=resumed.uri if resumed else None,
        archived_to=archived,
        stopped_early=stopped,
        elapsed_s=time.time() - t0,
        trained=trained,
    )
