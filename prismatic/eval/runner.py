"""Run a LIBERO evaluation: environments in worker processes, one batched policy in the main process, resumable.

Workers each own one environment at a time and play (task, trial) items from a shared queue; whenever an episode
needs a new action chunk the worker sends its observation to the main process, which answers the requests of all
workers together with one batched policy call. Every finished episode is appended to `episodes.jsonl` at once, so an
interrupted evaluation resumes without redoing finished episodes. An episode that raises, or whose worker dies, is
recorded as a failure with its error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from prismatic.eval.libero_env import EnvHandle, load_factory
from prismatic.eval.protocol import Protocol, suite_of
from prismatic.eval.rollout import EpisodeRecorder, EpisodeResult, policy_request, run_episode
from prismatic.util.atomic_io import atomic_write_json

# requests (each: images, state, instruction) -> one (chunk, action_dim) LIBERO-ready action array per request
BatchedPolicy = Callable[[list[dict[str, Any]]], list[np.ndarray]]
EPISODES_FILE = "episodes.jsonl"
RESULTS_FILE = "eval_results.json"
LOG_FILE = "eval.log"


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
    render_backend: str | None = None  # MUJOCO_GL for the workers (egl or osmesa)
    setup: dict[str, Any] = field(default_factory=dict)  # how the policy was set up (statistics key, images, ...)


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
) -> EpisodeResult:
    task_id, trial = item
    recorder = EpisodeRecorder(enabled=video_dir is not None)
    result = run_episode(
        handle.env, handle.initial_states[trial], protocol, query, task_id, trial, handle.description, recorder
    )
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


def _worker_main(
    slot: tuple[int, int], settings: EvalSettings, work_q: Any, request_q: Any, response_q: Any, event_q: Any
) -> None:
    """A worker process: play work items until the sentinel; ask the main process for every action chunk."""
    if settings.render_backend:
        os.environ["MUJOCO_GL"] = settings.render_backend
    factory = load_factory(settings.env_factory, settings.env_factory_kwargs)
    envs = _EnvCache(factory, settings.protocol)
    video_dir = settings.results_dir / "videos" if settings.save_videos else None
    while True:
        item = work_q.get()
        if item is None:
            break
        event_q.put(("start", slot, item))
        try:
            handle = envs.get(item[0])
        except Exception as err:
            event_q.put(("done", slot, _failed(item, f"environment creation failed: {type(err).__name__}: {err}")))
            continue

        def query(obs: dict[str, Any], description: str = handle.description) -> Any:
            request_q.put((slot, policy_request(obs, description)))
            return response_q.get()

        event_q.put(("done", slot, _play(handle, item, settings.protocol, query, video_dir).to_json()))
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


def _run_parallel(
    settings: EvalSettings, todo: list[tuple[int, int]], policy: BatchedPolicy, record: Callable[[dict[str, Any]], None]
) -> None:
    ctx = mp.get_context("spawn")  # never fork a process that holds TensorFlow / torch threads
    work_q, request_q, event_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    for item in todo:
        work_q.put(item)
    num_workers = max(1, min(settings.num_workers, len(todo)))
    for _ in range(num_workers):
        work_q.put(None)
    procs: dict[int, Any] = {}
    responses: dict[tuple[int, int], Any] = {}
    incarnation = [0] * num_workers

    def start(wid: int) -> None:
        incarnation[wid] += 1
        slot = (wid, incarnation[wid])
        responses[slot] = ctx.Queue()
        procs[wid] = ctx.Process(
            target=_worker_main, args=(slot, settings, work_q, request_q, responses[slot], event_q), daemon=True
        )
        procs[wid].start()

    for wid in range(num_workers):
        start(wid)
    in_flight: dict[int, tuple[int, int]] = {}
    remaining = len(todo)

    def handle_events(timeout: float) -> None:
        nonlocal remaining
        for kind, slot, payload in _drain(event_q, timeout, 10_000):
            if slot[1] != incarnation[slot[0]]:
                continue
            if kind == "start":
                in_flight[slot[0]] = tuple(payload)
            else:
                in_flight.pop(slot[0], None)
                record(payload)
                remaining -= 1

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

    try:
        while remaining > 0:
            handle_events(0.0)
            requests = collect_requests()
            if requests:
                chunks = policy([req for _, req in requests])
                for (slot, _), chunk in zip(requests, chunks, strict=True):
                    responses[slot].put(np.asarray(chunk))
            handle_events(0.0)
            for wid, proc in list(procs.items()):
                if proc.is_alive() or proc.exitcode == 0:
                    continue
                handle_events(0.2)  # a worker may have reported its episode just before dying
                item = in_flight.pop(wid, None)
                if item is None:
                    raise RuntimeError(
                        f"evaluation worker {wid} exited with code {proc.exitcode} outside an episode "
                        "(see its traceback above); check --env_factory and the simulator installation"
                    )
                record(_failed(item, f"worker process died (exit code {proc.exitcode})"))
                remaining -= 1
                if remaining > 0:
                    start(wid)
    finally:
        for proc in procs.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


def _run_inline(
    settings: EvalSettings, todo: list[tuple[int, int]], policy: BatchedPolicy, record: Callable[[dict[str, Any]], None]
) -> None:
    envs = _EnvCache(load_factory(settings.env_factory, settings.env_factory_kwargs), settings.protocol)
    video_dir = settings.results_dir / "videos" if settings.save_videos else None
    try:
        for item in todo:
            try:
                handle = envs.get(item[0])
            except Exception as err:
                record(_failed(item, f"environment creation failed: {type(err).__name__}: {err}"))
                continue
            query = lambda obs, h=handle: policy([policy_request(obs, h.description)])[0]  # noqa: E731
            record(_play(handle, item, settings.protocol, query, video_dir).to_json())
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


def summarize(rows: Iterable[dict[str, Any]], settings: EvalSettings, task_ids: list[int]) -> dict[str, Any]:
    per_task: dict[str, dict[str, Any]] = {}
    all_rows = list(rows)
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
        }
    first_error = next((r for r in all_rows if r.get("error")), None)
    total_trials = sum(t["trials"] for t in per_task.values())
    total_successes = sum(t["successes"] for t in per_task.values())
    return {
        "suite": suite_of(settings.protocol.suite),
        "checkpoint": settings.checkpoint,
        "protocol": {**asdict(settings.protocol), "episode_steps": settings.protocol.episode_steps},
        "setup": {
            **settings.setup,
            "num_workers": settings.num_workers,
            "render_backend": settings.render_backend,
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


def evaluate(settings: EvalSettings, policy: BatchedPolicy) -> dict[str, Any]:
    """Play every (task, trial) of the protocol not yet in `episodes.jsonl`; write and return the results."""
    protocol = settings.protocol
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    factory = load_factory(settings.env_factory, settings.env_factory_kwargs)
    num_tasks = factory.num_tasks(protocol.suite)
    task_ids = list(protocol.task_ids) if protocol.task_ids is not None else list(range(num_tasks))
    bad = [t for t in task_ids if not 0 <= t < num_tasks]
    if bad:
        raise ValueError(f"--task_ids {bad} out of range: {protocol.suite} has tasks 0..{num_tasks - 1}")
    finished = read_finished(settings.results_dir / EPISODES_FILE)
    todo = [(t, k) for t in task_ids for k in range(protocol.num_trials_per_task) if (t, k) not in finished]
    log = _EpisodeLog(settings.results_dir)
    progress = tqdm(
        total=len(task_ids) * protocol.num_trials_per_task, initial=len(finished), desc="episodes", dynamic_ncols=True
    )
    rows = [r for key, r in finished.items() if key[0] in task_ids and key[1] < protocol.num_trials_per_task]
    started = time.perf_counter()

    def record(row: dict[str, Any]) -> None:
        log.write(row)
        rows.append(row)
        progress.update(1)
        progress.set_postfix(success=f"{sum(r['success'] for r in rows) / len(rows):.1%}", refresh=False)

    try:
        if todo:
            runner = _run_inline if settings.num_workers == 0 else _run_parallel
            runner(settings, todo, policy, record)
    finally:
        progress.close()
        log.close()
    results = summarize(rows, settings, task_ids)
    results["seconds_this_session"] = round(time.perf_counter() - started, 1)
    atomic_write_json(settings.results_dir / RESULTS_FILE, results)
    with (settings.results_dir / LOG_FILE).open("a", encoding="utf-8") as log_file:
        for task_id, task in results["per_task"].items():
            log_file.write(
                f"task {task_id} ({task['description']}): {task['successes']}/{task['trials']} = "
                f"{(task['success_rate'] or 0):.1%}\n"
            )
        log_file.write(
            f"TOTAL {results['suite']}: {results['total']['successes']}/{results['total']['trials']} = "
            f"{(results['total']['success_rate'] or 0):.1%}\n"
        )
    return results
