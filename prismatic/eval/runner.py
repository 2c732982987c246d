"""Run a LIBERO evaluation: environments in worker processes, one batched policy in the main process, resumable.

Workers each own one environment at a time and play (task, trial) items from a shared queue; whenever an episode
needs a new action chunk the worker sends its observation to the main process, which answers the requests of all
workers together with one batched policy call. Every finished episode is appended to `episodes.jsonl` at once, so an
interrupted evaluation resumes without redoing finished episodes. An episode that raises, whose worker dies, or that
runs past `episode_timeout_s` is recorded with its `error`: it is neither a success nor a failure, stays out of the
success rate, and the next run plays it again.

SIGTERM and SIGINT stop the evaluation cleanly: the workers are terminated (killed after a short grace), the logs are
closed with every finished episode saved, and `EvalInterrupted` tells the caller how many. Workers also exit on
their own when the main process dies, so no ~2 GB simulator process is ever left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import platform
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from prismatic.eval.libero_env import (
    DEFAULT_INITIAL_STATES,
    EnvHandle,
    apply_render_backend,
    load_factory,
    read_initial_states,
    select_initial_states,
)
from prismatic.eval.protocol import Protocol, suite_of
from prismatic.eval.rollout import EpisodeRecorder, EpisodeResult, policy_request, run_episode
from prismatic.util.atomic_io import atomic_write_json

# requests (each: images, state, instruction) -> one (chunk, action_dim) LIBERO-ready action array per request
BatchedPolicy = Callable[[list[dict[str, Any]]], list[np.ndarray]]
EPISODES_FILE = "episodes.jsonl"
RESULTS_FILE = "eval_results.json"
LOG_FILE = "eval.log"
STOP_GRACE_S = 3.0  # after SIGTERM, how long a worker may take to exit before it is killed
PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal the kernel sends this process when its parent dies
# ((task, trial), initial state from --initial_states_path or None for the environment's own) for one episode
WorkItem = tuple[tuple[int, int], np.ndarray | None]


@dataclass
class EvalSettings:
    protocol: Protocol
    results_dir: Path
    num_workers: int = 2  # environment processes; 0 = play episodes in this process (debugging)
    env_factory: str = "prismatic.eval.libero_env:LiberoEnvFactory"
    env_factory_kwargs: dict[str, Any] = field(default_factory=dict)
    save_videos: bool = False
    max_batch: int = 64
    batch_wait_s: float = 0.05  # how long a policy call may wait for the other workers' requests
    checkpoint: str = ""
    render_backend: str | None = None  # MUJOCO_GL where environments run (workers, or this process when inline)
    episode_timeout_s: float | None = None  # an episode running longer is stopped and recorded as an error
    initial_states_path: Path | None = None  # VLA-Adapter-style JSON of initial states; None = the suite's own
    setup: dict[str, Any] = field(default_factory=dict)  # how the policy was set up (statistics key, images, ...)


class EvalInterrupted(BaseException):
    """SIGTERM or SIGINT stopped the evaluation after the workers were stopped and the logs closed. A BaseException,
    so that an episode's `except Exception` never records it as that episode's error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.saved = 0  # finished episodes in episodes.jsonl (of this evaluation's episodes)
        self.total = 0
        self.episodes_file = Path(EPISODES_FILE)

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def message(self) -> str:
        return (
            f"interrupted by {signal.Signals(self.signum).name}: {self.saved} of {self.total} episodes are saved in "
            f"{self.episodes_file}; re-run the same command to resume"
        )


class EpisodeTimeout(BaseException):
    """An in-process episode ran past `episode_timeout_s` (raised by SIGALRM; a BaseException so that the episode's
    own `except Exception` cannot swallow it)."""


def timeout_error(seconds: float) -> str:
    return f"episode timed out after {seconds:g} s"


def format_rate(rate: float | None) -> str:
    """A success rate for people: "n/a" when no episode was played to the end (all errored), never "0.0%"."""
    return "n/a" if rate is None else f"{rate:.1%}"


def read_finished(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Episodes already played to the end (a truncated last line from a crash is ignored). An episode that errored
    (environment or policy failure) is not finished: the next run plays it again."""
    done: dict[tuple[int, int], dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not row.get("error"):
                done[(int(row["task_id"]), int(row["trial"]))] = row
    return done


class _EpisodeLog:
    """Appends each finished episode durably (flush + fsync) and mirrors it in the readable log."""

    def __init__(self, results_dir: Path) -> None:
        self.jsonl = (results_dir / EPISODES_FILE).open("a", encoding="utf-8")
        self.log = (results_dir / LOG_FILE).open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())
        status = "success" if row["success"] else "failure"
        extra = f" error={row['error']}" if row.get("error") else ""
        self.log.write(
            f"task {row['task_id']} trial {row['trial']}: {status} after {row['steps']} steps "
            f"({row['description']}){extra}\n"
        )
        self.log.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.log.close()


def _write_video(frames: list[np.ndarray], path: Path) -> str | None:
    try:
        import imageio.v2 as imageio

        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(str(path), frames, fps=30)
        return str(path)
    except Exception:  # videos are optional; never fail an evaluation over one
        return None


def _play(
    handle: EnvHandle,
    item: tuple[int, int],
    protocol: Protocol,
    query: Callable[[dict[str, Any]], Any],
    video_dir: Path | None,
    initial_state: np.ndarray | None,
) -> EpisodeResult:
    task_id, trial = item
    recorder = EpisodeRecorder(enabled=video_dir is not None)
    state = handle.initial_states[trial] if initial_state is None else initial_state
    result = run_episode(handle.env, state, protocol, query, task_id, trial, handle.description, recorder)
    if video_dir is not None and recorder.frames:
        result.video = _write_video(
            recorder.frames, video_dir / f"task{task_id:02d}_trial{trial:02d}_{int(result.success)}.mp4"
        )
    return result


class _EnvCache:
    """One environment at a time per process (episodes arrive grouped by task)."""

    def __init__(self, factory: Any, protocol: Protocol) -> None:
        self.factory, self.protocol = factory, protocol
        self.task_id: int | None = None
        self.handle: EnvHandle | None = None

    def get(self, task_id: int) -> EnvHandle:
        if self.task_id != task_id or self.handle is None:
            self.close()
            self.handle = self.factory.make(
                self.protocol.suite, task_id, self.protocol.camera_resolution, self.protocol.env_seed
            )
            self.task_id = task_id
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(Exception):
                self.handle.env.close()
        self.handle, self.task_id = None, None


def _failed(item: tuple[int, int], error: str) -> dict[str, Any]:
    return EpisodeResult(item[0], item[1], False, 0, 0, 0.0, error=error).to_json()


def _exit_when_gone(parent: Any) -> None:
    parent.join()  # returns when the main process has exited, however it ended
    os._exit(1)


def _follow_parent() -> None:
    """Never outlive the main process: a worker blocks on its queues (or in the simulator) and holds ~2 GB with real
    LIBERO. On Linux the kernel kills it when the main process dies, even while it is stuck in C code; a watchdog
    thread covers the other systems. Ctrl-C reaches every process of the terminal's group: only the main process acts
    on it (and stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    parent = mp.parent_process()
    if parent is not None:  # also catches a parent that died before prctl took effect
        threading.Thread(target=_exit_when_gone, args=(parent,), name="parent-watchdog", daemon=True).start()


def _worker_main(
    slot: tuple[int, int], settings: EvalSettings, work_q: Any, request_q: Any, response_q: Any, event_q: Any
) -> None:
    """A worker process: play work items until the sentinel; ask the main process for every action chunk."""
    _follow_parent()
    apply_render_backend(settings.render_backend)  # before the factory can import the simulator
    factory = load_factory(settings.env_factory, settings.env_factory_kwargs)
    envs = _EnvCache(factory, settings.protocol)
    video_dir = settings.results_dir / "videos" if settings.save_videos else None
    while True:
        work: WorkItem | None = work_q.get()
        if work is None:
            break
        item, initial_state = work
        event_q.put(("start", slot, item))
        try:
            handle = envs.get(item[0])
        except Exception as err:
            event_q.put(("done", slot, _failed(item, f"environment creation failed: {type(err).__name__}: {err}")))
            continue

        def query(obs: dict[str, Any], description: str = handle.description) -> Any:
            request_q.put((slot, policy_request(obs, description)))
            return response_q.get()

        result = _play(handle, item, settings.protocol, query, video_dir, initial_state)
        event_q.put(("done", slot, result.to_json()))
    envs.close()


def _drain(source: Any, first_timeout: float, limit: int) -> list[Any]:
    items = []
    try:
        items.append(source.get(timeout=first_timeout))
        while len(items) < limit:
            items.append(source.get_nowait())
    except queue.Empty:
        pass
    return items


def _stop_workers(procs: list[Any], graceful: bool) -> None:
    """After the last episode the workers have their sentinel: give them time to close their environments.
    Otherwise (an error, a signal) terminate them at once, and kill any that still runs after a short grace (one
    stuck in C code may not act on SIGTERM)."""
    if graceful:
        deadline = time.monotonic() + 10
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def _run_parallel(
    settings: EvalSettings, todo: list[WorkItem], policy: BatchedPolicy, record: Callable[[dict[str, Any]], None]
) -> None:
    ctx = mp.get_context("spawn")  # never fork a process that holds TensorFlow / torch threads
    work_q, request_q, event_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    queues = [work_q, request_q, event_q]
    for work in todo:
        work_q.put(work)
    num_workers = max(1, min(settings.num_workers, len(todo)))
    for _ in range(num_workers):
        work_q.put(None)
    procs: dict[int, Any] = {}  # the live worker of each slot
    every_proc: list[Any] = []  # including the replaced ones, to make sure all of them are gone at the end
    responses: dict[tuple[int, int], Any] = {}
    incarnation = [0] * num_workers

    def start(wid: int) -> None:
        incarnation[wid] += 1
        slot = (wid, incarnation[wid])
        responses[slot] = ctx.Queue()
        queues.append(responses[slot])
        procs[wid] = ctx.Process(
            target=_worker_main, args=(slot, settings, work_q, request_q, responses[slot], event_q), daemon=True
        )
        procs[wid].start()
        every_proc.append(procs[wid])

    for wid in range(num_workers):
        start(wid)
    in_flight: dict[int, tuple[tuple[int, int], float]] = {}  # worker -> (episode, when it started)
    remaining = len(todo)

    def handle_events(timeout: float) -> None:
        nonlocal remaining
        for kind, slot, payload in _drain(event_q, timeout, 10_000):
            if slot[1] != incarnation[slot[0]]:
                continue
            if kind == "start":
                in_flight[slot[0]] = (tuple(payload), time.monotonic())
            else:
                in_flight.pop(slot[0], None)
                record(payload)
                remaining -= 1

    def replace(wid: int, item: tuple[int, int], error: str) -> None:
        """Record the episode of a dead or stopped worker as an error; a fresh worker takes over its slot."""
        nonlocal remaining
        record(_failed(item, error))
        remaining -= 1
        incarnation[wid] += 1  # whatever the old worker still sends is ignored
        if remaining > 0:
            start(wid)
        else:
            del procs[wid]

    def collect_requests() -> list[tuple[tuple[int, int], dict[str, Any]]]:
        """Wait (briefly) until every worker in an episode has asked: workers then step in lockstep and each
        policy call serves all of them. Requests of a dead worker are dropped."""
        requests: list[tuple[tuple[int, int], dict[str, Any]]] = []
        deadline = time.perf_counter() + settings.batch_wait_s
        timeout = 0.02
        while len(requests) < min(settings.max_batch, max(1, len(in_flight))):
            got = _drain(request_q, timeout, settings.max_batch - len(requests))
            requests.extend((slot, req) for slot, req in got if slot[1] == incarnation[slot[0]])
            timeout = max(0.0, deadline - time.perf_counter())
            if not requests or timeout == 0.0:
                break
        return requests

    def stop_overdue() -> None:
        """An episode past the timeout (a simulator step or a render that never returns) cannot be stopped from
        inside its worker: kill the worker, record the episode as an error, start a fresh worker."""
        if not settings.episode_timeout_s:
            return
        now = time.monotonic()
        for wid, (item, started) in list(in_flight.items()):
            if now - started <= settings.episode_timeout_s:
                continue
            procs[wid].kill()
            procs[wid].join(timeout=5)
            del in_flight[wid]
            replace(wid, item, f"{timeout_error(settings.episode_timeout_s)} (its worker was killed)")

    def ask_policy(batch: list[dict[str, Any]]) -> list[np.ndarray]:
        """The policy runs here, in the main process: a call that never returns would stall every worker, so it is
        held to the episode timeout too, and stops the evaluation (a policy problem, not one episode's)."""
        timeout = settings.episode_timeout_s if _alarm_available() else None
        try:
            with _alarm(timeout):
                return policy(batch)
        except EpisodeTimeout:
            raise RuntimeError(
                f"the policy did not answer a batch of {len(batch)} requests within --episode_timeout_s {timeout:g} s; "
                "the evaluation stopped (finished episodes are saved, re-running resumes)"
            ) from None

    finished = False
    try:
        while remaining > 0:
            handle_events(0.0)
            requests = collect_requests()
            if requests:
                chunks = ask_policy([req for _, req in requests])
                for (slot, _), chunk in zip(requests, chunks, strict=True):
                    responses[slot].put(np.asarray(chunk))
            handle_events(0.0)
            stop_overdue()
            for wid, proc in list(procs.items()):
                if proc.is_alive() or proc.exitcode == 0:
                    continue
                handle_events(0.2)  # a worker may have reported its episode just before dying
                if wid not in in_flight:
                    raise RuntimeError(
                        f"evaluation worker {wid} exited with code {proc.exitcode} outside an episode "
                        "(see its traceback above); check --env_factory and the simulator installation"
                    )
                item, _ = in_flight.pop(wid)
                replace(wid, item, f"worker process died (exit code {proc.exitcode})")
        finished = True
    finally:
        _stop_workers(every_proc, graceful=finished)
        for channel in queues:
            channel.cancel_join_thread()  # nobody reads these any more: never block this process's exit on them
            channel.close()


def _alarm_available() -> bool:
    """SIGALRM exists on POSIX and reaches the main thread only."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _require_alarm() -> None:
    """In-process episodes are timed with SIGALRM."""
    if not _alarm_available():
        raise ValueError(
            "--episode_timeout_s with --num_workers 0 needs SIGALRM in the main thread (POSIX); use --num_workers 1 "
            "or more (the main process then kills an overdue worker), or drop --episode_timeout_s"
        )


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise EpisodeTimeout in this (main) thread after `seconds`. It interrupts Python code and sleeps, not a call
    stuck inside C code: a hard limit needs worker processes."""
    if not seconds:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise EpisodeTimeout(timeout_error(seconds))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def _run_inline(
    settings: EvalSettings, todo: list[WorkItem], policy: BatchedPolicy, record: Callable[[dict[str, Any]], None]
) -> None:
    """Episodes in this process, one after the other. The first environment (the simulator's OpenGL renderer) is
    created before the first policy call, so before `ChunkPolicy` imports TensorFlow: robosuite's renderer segfaults
    in a process that already holds TensorFlow."""
    envs = _EnvCache(load_factory(settings.env_factory, settings.env_factory_kwargs), settings.protocol)
    video_dir = settings.results_dir / "videos" if settings.save_videos else None
    if "tensorflow" in sys.modules and settings.env_factory.endswith(":LiberoEnvFactory"):
        warnings.warn(
            "TensorFlow is already imported where LIBERO environments will render (--num_workers 0): robosuite's "
            "renderer may crash; import TensorFlow after the first environment exists, or use --num_workers 1",
            RuntimeWarning,
            stacklevel=2,
        )

    def play(item: tuple[int, int], initial_state: np.ndarray | None) -> dict[str, Any]:
        try:
            handle = envs.get(item[0])
        except Exception as err:
            return _failed(item, f"environment creation failed: {type(err).__name__}: {err}")
        query = lambda obs: policy([policy_request(obs, handle.description)])[0]  # noqa: E731
        return _play(handle, item, settings.protocol, query, video_dir, initial_state).to_json()

    try:
        for item, initial_state in todo:
            try:
                with _alarm(settings.episode_timeout_s):
                    row = play(item, initial_state)
            except EpisodeTimeout as timeout:
                envs.close()  # it may be stuck half-way through a step: the next episode gets a fresh one
                row = _failed(item, str(timeout))
            record(row)
    finally:
        envs.close()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in (
        "vla-adapter-craft",
        "torch",
        "transformers",
        "timm",
        "tensorflow-cpu",
        "libero",
        "robosuite",
        "mujoco",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summarize(
    rows: Iterable[dict[str, Any]],
    settings: EvalSettings,
    task_ids: list[int],
    skipped: Iterable[tuple[int, int]] = (),
) -> dict[str, Any]:
    """The results file: per task and in total, successes over the episodes played to the end (errored ones are
    counted apart, and trials skipped because their expert demonstration failed are not played at all)."""
    per_task: dict[str, dict[str, Any]] = {}
    all_rows = list(rows)
    skipped_per_task = [task_id for task_id, _ in skipped]  # one entry per skipped trial
    for task_id in task_ids:
        mine = [r for r in all_rows if r["task_id"] == task_id]
        played = [r for r in mine if not r.get("error")]  # an errored episode is neither a success nor a failure
        successes = sum(bool(r["success"]) for r in played)
        per_task[str(task_id)] = {
            "description": next((r["description"] for r in mine if r.get("description")), ""),
            "trials": len(played),
            "successes": successes,
            "success_rate": successes / len(played) if played else None,
            "errors": len(mine) - len(played),
            "skipped": skipped_per_task.count(task_id),
        }
    first_error = next((r for r in all_rows if r.get("error")), None)
    total_trials = sum(t["trials"] for t in per_task.values())
    total_successes = sum(t["successes"] for t in per_task.values())
    states_path = settings.initial_states_path
    return {
        "suite": suite_of(settings.protocol.suite),
        "checkpoint": settings.checkpoint,
        "protocol": {**asdict(settings.protocol), "episode_steps": settings.protocol.episode_steps},
        "setup": {
            **settings.setup,
            "num_workers": settings.num_workers,
            "render_backend": settings.render_backend,
            "num_open_loop_steps": settings.protocol.num_open_loop_steps,
            "episode_timeout_s": settings.episode_timeout_s,
            "initial_states_path": str(states_path.resolve()) if states_path else DEFAULT_INITIAL_STATES,
            "initial_states_sha256": _sha256(states_path) if states_path else None,
            "env_factory": settings.env_factory,
        },
        "per_task": per_task,
        "total": {
            "trials": total_trials,
            "successes": total_successes,
            "success_rate": total_successes / total_trials if total_trials else None,
            "errors": sum(t["errors"] for t in per_task.values()),
        },
        "first_error": (
            None
            if first_error is None
            else {k: first_error[k] for k in ("task_id", "trial", "error") if k in first_error}
        ),
        "versions": _versions(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "episodes_file": EPISODES_FILE,
    }


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise EvalInterrupted in the main thread, so that the `finally` blocks run: workers stopped,
    logs closed (SIGTERM's default action would end this process at once and leave the workers behind). A repeated
    signal during that cleanup, which takes a few seconds at most, is ignored."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set from the main thread
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            return
        received.append(signum)
        raise EvalInterrupted(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _file_initial_states(
    settings: EvalSettings, factory: Any, task_ids: list[int]
) -> dict[tuple[int, int], np.ndarray | None]:
    """The states of `--initial_states_path` for every episode of this evaluation ({} without the flag), checked
    before any environment or worker starts."""
    path = settings.initial_states_path
    if path is None:
        return {}
    data = read_initial_states(path)
    if not callable(getattr(factory, "task_description", None)):
        raise ValueError(
            f"--initial_states_path needs task descriptions, which --env_factory {settings.env_factory} does not "
            "provide (no task_description(suite, task_id) method)"
        )
    suite = settings.protocol.suite
    descriptions = {task_id: str(factory.task_description(suite, task_id)) for task_id in task_ids}
    return select_initial_states(data, path, descriptions, settings.protocol.num_trials_per_task)


def evaluate(settings: EvalSettings, policy: BatchedPolicy) -> dict[str, Any]:
    """Play every (task, trial) of the protocol not yet in `episodes.jsonl`; write and return the results.

    Raises EvalInterrupted (after stopping the workers and closing the logs) on SIGTERM or SIGINT."""
    protocol = settings.protocol
    timeout = settings.episode_timeout_s
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"--episode_timeout_s must be >= 0 seconds (0 = no limit; got {timeout})")
    if settings.num_workers == 0:
        # this process renders: MUJOCO_GL must be set before anything imports the simulator
        apply_render_backend(settings.render_backend)
        if timeout:
            _require_alarm()
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    factory = load_factory(settings.env_factory, settings.env_factory_kwargs)
    num_tasks = factory.num_tasks(protocol.suite)
    task_ids = list(protocol.task_ids) if protocol.task_ids is not None else list(range(num_tasks))
    bad = [t for t in task_ids if not 0 <= t < num_tasks]
    if bad:
        raise ValueError(f"--task_ids {bad} out of range: {protocol.suite} has tasks 0..{num_tasks - 1}")
    file_states = _file_initial_states(settings, factory, task_ids)
    skipped = {key for key, state in file_states.items() if state is None}
    episodes_path = settings.results_dir / EPISODES_FILE
    finished = read_finished(episodes_path)
    wanted = [
        (task_id, trial)
        for task_id in task_ids
        for trial in range(protocol.num_trials_per_task)
        if (task_id, trial) not in skipped
    ]
    todo: list[WorkItem] = [(key, file_states.get(key)) for key in wanted if key not in finished]
    rows = [finished[key] for key in wanted if key in finished]
    log = _EpisodeLog(settings.results_dir)
    progress = tqdm(total=len(wanted), initial=len(rows), desc="episodes", dynamic_ncols=True)
    started = time.perf_counter()

    def record(row: dict[str, Any]) -> None:
        log.write(row)
        rows.append(row)
        progress.update(1)
        played = [r for r in rows if not r.get("error")]  # errored episodes are neither successes nor failures
        rate = sum(r["success"] for r in played) / len(played) if played else None
        progress.set_postfix(success=format_rate(rate), errors=len(rows) - len(played), refresh=False)

    try:
        with _stop_on_signals():
            if todo:
                runner = _run_inline if settings.num_workers == 0 else _run_parallel
                runner(settings, todo, policy, record)
    except EvalInterrupted as interrupted:
        done = read_finished(episodes_path)  # every recorded episode is already flushed to disk
        interrupted.saved = sum(key in done for key in wanted)
        interrupted.total = len(wanted)
        interrupted.episodes_file = episodes_path
        raise
    finally:
        progress.close()
        log.close()
    results = summarize(rows, settings, task_ids, skipped)
    results["seconds_this_session"] = round(time.perf_counter() - started, 1)
    atomic_write_json(settings.results_dir / RESULTS_FILE, results)
    with (settings.results_dir / LOG_FILE).open("a", encoding="utf-8") as log_file:
        for task_id, task in results["per_task"].items():
            skipped_note = f", {task['skipped']} skipped (failed expert demo)" if task["skipped"] else ""
            log_file.write(
                f"task {task_id} ({task['description']}): {task['successes']}/{task['trials']} = "
                f"{format_rate(task['success_rate'])}{skipped_note}\n"
            )
        log_file.write(
            f"TOTAL {results['suite']}: {results['total']['successes']}/{results['total']['trials']} = "
            f"{format_rate(results['total']['success_rate'])}\n"
        )
    return results
