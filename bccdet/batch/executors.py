"""Where the workers run: ``InProcessExecutor`` (``--workers 1``), ``PoolExecutor`` (spawned processes) and
``RayExecutor`` (``--backend ray``); each yields (task, result) as units finish, in any order."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..io import InputError
from .common import _reason, _short
from .worker import Worker


_POOL_WORKER: Worker | None = None


def _pool_init(cfg: dict) -> None:
    global _POOL_WORKER
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _POOL_WORKER = Worker(cfg)


def _pool_run(task: dict) -> dict:
    assert _POOL_WORKER is not None
    return _POOL_WORKER.run(task)


class InProcessExecutor:
    """``--workers 1``: the models are loaded once, in this process."""

    def __init__(self, cfg: dict):
        self.worker = Worker(cfg)

    def map_unordered(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        for t in tasks:
            yield t, self.worker.run(t)

    def close(self) -> None:
        pass


class PoolExecutor:
    """``--workers N``: N spawned processes, each loading the models once; a crashed worker (out of
    memory, segfault) fails only the units it held, and the pool is restarted."""

    def __init__(self, cfg: dict, workers: int, max_restarts: int = 3):
        self.cfg, self.n, self.restarts = cfg, workers, max_restarts
        self.pool = self._new()

    def _new(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.n, mp_context=mp.get_context("spawn"), initializer=_pool_init, initargs=(self.cfg,))

    def map_unordered(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        it = iter(tasks)
        inflight: dict = {}
        broken = False

        def fill():
            nonlocal broken
            while len(inflight) < 2 * self.n and not broken:
                t = next(it, None)
                if t is None:
                    return
                try:
                    inflight[self.pool.submit(_pool_run, t)] = t
                except BrokenProcessPool:
                    broken = True
                    inflight[_failed_future("worker process died")] = t

        fill()
        while inflight:
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for f in done:
                t = inflight.pop(f)
                try:
                    r = f.result()
                except BrokenProcessPool:
                    broken = True
                    r = {"status": "failed", "error": "worker process died (out of memory?); redone by --resume"}
                except Exception as e:
                    r = {"status": "failed", "error": _reason(e, t.get("path"))}
                yield t, r
            if broken and not inflight:
                if self.restarts <= 0:
                    raise RuntimeError("worker processes keep dying; giving up")
                self.restarts -= 1
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new()
                broken = False
            fill()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _failed_future(msg: str):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    f: Future = Future()
    f.set_exception(BrokenProcessPool(msg))
    return f


class _RayActor:
    def __init__(self, cfg: dict):
        self.w = Worker(cfg)

    def run(self, task: dict) -> dict:
        return self.w.run(task)


class RayExecutor:
    """``--backend ray``: one actor per worker, each loading the models once; outputs come back to the
    driver (so OUT need not be shared), inputs are read by path on the workers (shared storage)."""

    def __init__(self, cfg: dict, workers: int | None, address: str | None, cpus_per_worker: float = 1.0):
        try:
            import ray
        except ImportError as e:
            raise InputError(f"--backend ray needs ray (pip install 'ray[data]'): {_short(e)}") from None
        self.ray = ray
        self.started = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            kw: dict = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = int(workers or os.cpu_count() or 1)
            try:
                ray.init(**kw)
            except Exception as e:
                raise InputError(f"cannot start Ray ({_short(e)})") from None
            self.started = True
        gpus = 1 if str(cfg["pipeline"].get("device", "cpu")).startswith("cuda") else 0  # one GPU per actor
        res = ray.cluster_resources()
        n = workers or max(1, int(res.get("GPU", 1)) if gpus else int(res.get("CPU", 1) // cpus_per_worker))
        cfg = dict(cfg, pipeline=dict(cfg["pipeline"]))
        cfg["torch_threads"] = max(1, int(cpus_per_worker))
        spec = cfg["pipeline"]
        for key in ("detector", "classifier", "refiner", "rbc_morphology"):  # ship the weights: nodes need not
            if spec.get(key) and spec[key].get("path"):  # share a file system (a refiner without a path is
                spec[key] = dict(spec[key], bytes=Path(spec[key]["path"]).read_bytes())  # LiteMedSAM from its package)
        self.cfg_ref = ray.put(cfg)
        self.Actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus)(_RayActor)
        self.actors = [self.Actor.remote(self.cfg_ref) for _ in range(n)]

    def map_unordered(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        ray = self.ray
        from ray.exceptions import RayActorError

        it = iter(tasks)
        slots = [a for a in self.actors for _ in range(2)]  # two units queued per actor: no idle gaps
        inflight: dict = {}
        while True:
            while slots:
                t = next(it, None)
                if t is None:
                    break
                a = slots.pop()
                inflight[a.run.remote(t)] = (t, a)
            if not inflight:
                return
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                t, a = inflight.pop(ref)
                try:
                    r = ray.get(ref)
                except RayActorError as e:
                    r = {"status": "failed", "error": f"Ray worker died ({_short(e)}); redone by --resume"}
                    with contextlib.suppress(Exception):
                        ray.kill(a)
                    a = self.Actor.remote(self.cfg_ref)
                    self.actors.append(a)
                except Exception as e:
                    r = {"status": "failed", "error": _reason(e, t.get("path"))}
                slots.append(a)
                yield t, r

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        if self.started:
            self.ray.shutdown()
