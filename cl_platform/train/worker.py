"""The Ray Train loop of a continual-learning sequence: one fit walks every round of every method.

:func:`train_loop_per_worker` is the entry point: it copies the fit's latest Ray checkpoint (if
any) once, then runs a :class:`cl_platform.train.recipe.SequenceRecipe` for each method config
in turn. Where each method resumes is decided by :func:`cl_platform.train.state.decide_resume`
from that checkpoint and the ledger, whose finished rounds are authoritative. :class:`_Fit` is
what the methods of one fit share inside a worker.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

import torch

from cl_platform.methods.teacher import CachedTeacher, OnlineTeacher, TeacherSource
from cl_platform.methods.teacher_cache import ShardedTeacherCache, TeacherCache
from cl_platform.models.modality import ModalitySpec
from cl_platform.store import Store
from cl_platform.train import checkpoint as ckpt
from cl_platform.train.config import SequenceConfig
from cl_platform.train.evaluation import EvalScores, EvalSet, evaluate, load_eval_set
from cl_platform.train.recipe import RestoredCheckpoint, SequenceRecipe, scores_line
from cl_platform.train.replay import DATASET_PREFIX, Pool, dataset_name, select_pool
from cl_platform.train.shards import ShardBatches
from cl_platform.train.state import TrainState, progress_from_ledger  # noqa: F401 (sequence.method_results imports it from here)


def fit_configs(config: dict[str, Any]) -> list[SequenceConfig]:
    """The per-method configs of a fit's ``train_loop_config`` (``{"methods": [SequenceConfig dicts]}``)."""
    cfgs = [SequenceConfig.from_dict(d) for d in config["methods"]]
    if not cfgs:
        raise ValueError("a fit needs at least one method")
    return cfgs


class _Fit:
    """What every method of one fit shares inside a worker: store, shards, eval set, base scores."""

    def __init__(self, cfg: SequenceConfig, rank: int, world: int, rows: dict[str, int]) -> None:
        import ray.train

        self.cfg, self.rank, self.world = cfg, rank, world
        self.store = Store(cfg.store)
        self.spec = ModalitySpec.from_dict(cfg.spec)
        replay = [n for n in rows if n.startswith(DATASET_PREFIX)]  # read whole by every worker
        self.replay_names = replay
        names = [f"task_{r}" for r in range(len(cfg.tasks))] + (["kd"] if "kd" in rows else []) + replay
        self.shards = ShardBatches({n: ray.train.get_dataset_shard(n) for n in names}, rows, world,
                                   cfg.cache_rows, self.spec.pad_id, whole=replay)
        self._pools: dict[str, Pool] = {}
        self.eval_set: Optional[EvalSet] = None
        self._base: Optional[EvalScores] = None
        self.base_eval_seconds = 0.0  # spent evaluating the base model, reported once (see take_base_eval_seconds)
        self._teacher: Optional[TeacherSource] = None

    def evaluation_set(self) -> EvalSet:
        if self.eval_set is None:
            self.eval_set = load_eval_set(self.cfg, self.store, self.spec)
        return self.eval_set

    def base_scores(self, load_base: Callable[[], torch.nn.Module], log) -> EvalScores:
        """Accuracies, ranking accuracies and generation score of the base model, evaluated once per fit."""
        if self._base is None:
            t0 = time.time()
            with torch.no_grad():
                self._base = evaluate(load_base(), self.evaluation_set(), self.rank, self.world)
            self.base_eval_seconds = time.time() - t0
            log(scores_line("base model", self._base, time.time() - t0))
        return self._base

    def take_base_eval_seconds(self) -> float:
        """The base evaluation's seconds the first time asked, 0 after (each is recorded once)."""
        s, self.base_eval_seconds = self.base_eval_seconds, 0.0
        return s

    def replay_pool(self, task: str) -> Pool:
        """``task``'s replay pool (:func:`cl_platform.train.replay.select_pool` over its train split,
        read whole from this worker's shard), selected once per fit."""
        if task not in self._pools:
            cfg = self.cfg
            self._pools[task] = select_pool(self.shards.one_pass(dataset_name(task)), task, cfg.replay_per_task,
                                            cfg.seed)
        return self._pools[task]

    def teacher(self, path: Optional[str], k: int) -> TeacherSource:
        """The KD teacher of the fit: the cache at ``path`` (a folder of shards streamed from the
        store, or one safetensors file), or the frozen base online when ``path`` is ``None``."""
        if self._teacher is None:
            if path is None:
                self._teacher = OnlineTeacher(k)
            elif path.endswith(".safetensors"):
                self._teacher = CachedTeacher(TeacherCache.from_bytes(self.store.read_bytes(path)))
            else:
                self._teacher = CachedTeacher(ShardedTeacherCache.open(self.store, path))
        return self._teacher


@contextlib.contextmanager
def _latest_checkpoint(default_method: str) -> Iterator[Optional[RestoredCheckpoint]]:
    """The fit's latest Ray checkpoint in a local directory (removed after); ``None`` without one.

    Its state belongs to the method it names (``default_method`` when it names none); a
    checkpoint without a state file counts as none.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    d = tempfile.mkdtemp(prefix="cl_resume_")
    try:
        with checkpoint.as_directory() as src:
            shutil.copytree(src, d, dirs_exist_ok=True)
        state = ckpt.load_training_state(d)
        yield RestoredCheckpoint(d, TrainState.from_dict(state, default_method)) if state is not None else None
    finally:
        shutil.rmtree(d, ignore_errors=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: every method of ``config["methods"]`` in turn, each through every round."""
    import ray.train

    from cl_platform.train.ray_logging import set_routine_logging

    set_routine_logging(bool(config.get("verbose")))  # after Ray Train configured this process's logging
    cfgs = fit_configs(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets no thread count for a fractional CPU reservation, and torch would then start one
    # thread per core in every worker: workers sharing cores slow each other down several-fold.
    torch.set_num_threads(cfgs[0].torch_threads if cfgs[0].torch_threads > 0 else max(1, int(cfgs[0].cpus_per_worker)))
    fit = _Fit(cfgs[0], rank, world, dict(config.get("rows") or {}))
    fit.shards.start([f"task_{r}" for r in range(len(cfgs[0].tasks))] + ["kd"]
                     + fit.replay_names)
    with _latest_checkpoint(cfgs[0].method) as checkpoint:
        for cfg in cfgs:
            SequenceRecipe(cfg, fit).run(checkpoint)
