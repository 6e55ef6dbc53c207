"""``SequenceConfig``: everything a continual-learning sequence needs, as plain data.

It travels from the driver to every Ray Train worker as ``train_loop_config`` (a dict), so every
field is JSON-serialisable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class SequenceConfig:
    """One method trained through a sequence of tasks.

    Attributes:
        run: run name (``<store>/runs/<run>/``).
        store: store URL.
        method: method name (``cl_platform.methods``).
        method_config: ``MethodConfig`` fields.
        tasks: task names in training order.
        model_uri: URI of the base model directory (``save_pretrained`` output).
        spec: ``ModalitySpec.to_dict()`` of the model's vocabulary.
        kd_stream: name of the image-generation stream used for KD (methods that need a teacher).
        teacher_cache: store path of the teacher cache for (base, kd stream, K, T).
        probe: the generation probe (``ProbeSpec.to_dict()``, :mod:`cl_platform.eval.probe`;
            ``None``: no generation score).
        steps_per_task: optimiser steps per round.
        batch_size: task rows per step per worker.
        kd_batch_size: KD stream rows per step per worker.
        lr: peak learning rate (cosine with warm-up, restarted every round).
        warmup_frac: fraction of each round's steps used for linear warm-up.
        weight_decay: AdamW weight decay.
        grad_clip: gradient-norm clip (0 disables).
        checkpoint_every: also checkpoint every N steps inside a round (0: round ends only).
        eval_batch_size: prompts per generate call during evaluation.
        seed: seed of data order, initialisation and sampling.
        from_checkpoint: store path of an adapter to start from (another run's final checkpoint).
        log_every: progress line every N steps.
        num_workers, cpus_per_worker, gpus_per_worker: Ray Train scaling.
        max_failures: worker-group restarts allowed (FailureConfig).
        cache_rows: a worker whose shard of a task or of the KD stream has at most this many rows
            keeps it in memory after its first pass streamed from Ray Data, and reshuffles it
            there for every later pass (0: every pass is streamed).
        torch_threads: torch intra-op threads per worker (0: one per whole CPU the worker
            reserves, at least one).
    """

    run: str
    store: str
    method: str
    tasks: list[str]
    model_uri: str
    spec: dict
    method_config: dict = field(default_factory=dict)
    kd_stream: Optional[str] = None
    teacher_cache: Optional[str] = None
    probe: Optional[dict] = None
    steps_per_task: int = 100
    batch_size: int = 16
    kd_batch_size: int = 8
    lr: float = 3e-3
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 0
    eval_batch_size: int = 64
    seed: int = 0
    from_checkpoint: Optional[str] = None
    log_every: int = 25
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    cache_rows: int = 50_000
    torch_threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SequenceConfig":
        return cls(**d)

    @property
    def method_prefix(self) -> str:
        """Store path of this method's artifacts inside the run."""
        return f"runs/{self.run}/{self.method}"
