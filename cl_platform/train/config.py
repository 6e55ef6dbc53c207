"""``SequenceConfig``: everything a continual-learning sequence needs, as plain data.

It travels from the driver to every Ray Train worker as ``train_loop_config`` (a dict), so every
field is JSON-serialisable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from cl_platform.fields import add_arguments, setting, validate
from cl_platform.methods.teacher import TEACHER_MODES


#: The values of ``SequenceConfig.precision``.
PRECISIONS = ("fp32", "bf16")


@dataclass
class SequenceConfig:
    """One method trained through a sequence of tasks.

    Each field's documentation, bounds and (for the training and Ray scaling settings) command-line
    flag are in its declaration (:func:`cl_platform.fields.setting`); construction checks every
    field (``ValueError`` naming it).
    """

    run: str = setting(cli=False, help="run name (<store>/runs/<run>/)")
    store: str = setting(cli=False, help="store URL")
    method: str = setting(cli=False, help="method name (cl_platform.methods)")
    tasks: list[str] = setting(cli=False, help="task names in training order")
    model_uri: str = setting(cli=False, help="URI of the base model directory (save_pretrained output)")
    spec: dict = setting(cli=False, help="ModalitySpec.to_dict() of the model's vocabulary")
    method_config: dict = setting(default_factory=dict, cli=False, help="MethodConfig fields")
    earlier_tasks: Optional[list[str]] = setting(None, cli=False,
                                       help="tasks learned before this run's first round (the --from-run chain's "
                                            "task orders, oldest first); round r of this run is round "
                                            "len(earlier_tasks) + r of its lineage and is seeded as such; "
                                            "None: none)")
    kd_stream: Optional[str] = setting(None, cli=False, help="name of the image-generation stream used for KD "
                                                             "(methods that need a teacher)")
    teacher_cache: Optional[str] = setting(None, cli=False,
                                           help="store path of the teacher cache for (base, kd stream, K, T): a "
                                                "folder of shards (None: the online teacher, or no KD)")
    probe: Optional[dict] = setting(None, cli=False, help="the generation probe (ProbeSpec.to_dict(), "
                                                          "cl_platform.eval.probe; None: no generation score)")
    steps_per_task: int = setting(100, ge=1, flag="--steps", group="training", sweep="fixed",
                                  help="optimiser steps per task (round)")
    batch_size: int = setting(16, ge=1, group="training", sweep="fixed", help="task rows per step per worker")
    kd_batch_size: int = setting(8, ge=1, group="training", sweep="fixed", help="KD stream rows per step per worker")
    lr: float = setting(3e-3, gt=0, group="training", sweep="search",
                        help="peak learning rate (cosine with warm-up, restarted every round)")
    warmup_frac: float = setting(0.1, ge=0, lt=1, group="training", sweep="fixed",
                                 help="fraction of each round's steps used for linear warm-up")
    weight_decay: float = setting(0.0, ge=0, group="training", sweep="search", help="AdamW weight decay")
    replay_fraction: float = setting(0.0, ge=0, lt=1, group="training", sweep="search",
                                     help="share of each training batch replayed from the tasks learned before the "
                                          "round (the --from-run chain's, then this run's): round(f * batch size) "
                                          "rows from their replay pools, the rest from the current task (0: none)")
    replay_per_task: int = setting(1000, ge=1, group="training", sweep="fixed",
                                   help="rows of an earlier task's train split in its replay pool (at most; a "
                                        "smaller task gives all its rows), chosen by the seed and the task's name: "
                                        "the same pool in every round and every run of a lineage")
    grad_clip: float = setting(1.0, ge=0, group="training", sweep="fixed", help="gradient-norm clip (0 disables)")
    checkpoint_every: int = setting(0, ge=0, group="training", sweep="fixed",
                                    help="also checkpoint every N steps inside a round (0: round ends only)")
    eval_batch_size: int = setting(64, ge=1, group="training", sweep="fixed",
                                   help="prompts per generate call during evaluation")
    ranking_max_candidates: int = setting(32, ge=0, group="training", sweep="fixed",
                                          help="a task whose train and eval splits have at most this many distinct "
                                               "answers has a closed answer set and also gets a candidate-ranking "
                                               "accuracy after every round (its most likely allowed answer); 0: none")
    seed: int = setting(0, ge=0, group="training", sweep="fixed",
                        help="seed of data order, adapter initialisation and sampling")
    precision: str = setting("fp32", choices=PRECISIONS, group="training", sweep="fixed",
                             help="fp32: everything in float32; bf16: the frozen base weights stored in bfloat16 and "
                                  "the forward run under bfloat16 autocast, while the adapters, their gradients, the "
                                  "optimizer state and the losses stay in float32 (one of: fp32, bf16)")
    gradient_checkpointing: int = setting(0, ge=0, le=1, group="training", sweep="fixed",
                                          help="1: keep only each decoder layer's input during the forward and "
                                               "recompute the layer in the backward (less activation memory, about "
                                               "a third more compute); 0: keep every activation")
    gradient_diagnostic: int = setting(1, ge=0, le=1, group="training", sweep="fixed",
                                       help="1: after every round, the gradient-conflict diagnostic on rank 0 (task "
                                            "loss vs image-generation loss on 8 fixed rows each, per adapter "
                                            "parameter group: norms, cosine, shared-entry shares; "
                                            "cl_platform.train.gradients) in the ledger and results.json; 0: off")
    teacher_mode: str = setting("auto", choices=TEACHER_MODES, group="training", sweep="fixed",
                                help="where the KD teacher's targets come from: 'cached' (computed once by a Ray "
                                     "Data job over actors, stored in shards the workers stream), 'online' (the "
                                     "frozen base in each worker, a second no-grad forward per KD batch) or 'auto' "
                                     "(cached when the estimated cache fits --teacher-cache-limit-gb)")
    teacher_cache_limit_gb: float = setting(4.0, ge=0, group="training", sweep="fixed",
                                            help="with --teacher-mode auto: the largest teacher cache (GiB) built "
                                                 "before the online teacher is chosen instead")
    evaluate_earlier: int = setting(0, ge=0, le=1, group="training", sweep="fixed",
                                    help="1: after every round also evaluate the tasks learned before this run "
                                         "(earlier_tasks, the --from-run chain's) and record their accuracies in "
                                         "the round's ledger metrics as earlier_accuracy; 0: only this run's tasks")
    from_checkpoint: Optional[str] = setting(None, cli=False, help="store path of an adapter to start from "
                                                                   "(another run's final checkpoint)")
    log_every: int = setting(25, ge=1, group="training", sweep="fixed", help="progress line every N steps")
    num_workers: int = setting(1, ge=1, flag="--workers", group="ray", help="Ray Train workers (DDP)")
    cpus_per_worker: float = setting(1.0, gt=0, group="ray", help="CPUs each worker reserves")
    gpus_per_worker: Optional[float] = setting(None, ge=0, group="ray",
                                               help="GPUs each worker reserves (default: 1 when the cluster has "
                                                    "GPUs, else 0; resolved once Ray is up)")
    max_failures: int = setting(2, ge=0, group="ray", sweep="fixed",
                                help="worker-group restarts allowed (Ray Train FailureConfig)")
    cache_rows: int = setting(50_000, ge=0, group="ray",
                              help="a worker whose shard of a task or of the KD stream has at most this many rows "
                                   "keeps it in memory after its first pass streamed from Ray Data, and reshuffles "
                                   "it there for every later pass (0: every pass is streamed)")
    torch_threads: int = setting(0, ge=0, flag="--threads-per-worker", group="ray",
                                 help="torch intra-op threads per worker (0: one per whole CPU the worker reserves, "
                                      "at least one)")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SequenceConfig":
        return cls(**d)

    def lineage_round(self, r: int) -> int:
        """Index of this run's round ``r`` in its lineage (rounds of the --from-run chain counted first)."""
        return len(self.earlier_tasks or []) + r

    @property
    def method_prefix(self) -> str:
        """Store path of this method's artifacts inside the run."""
        return f"runs/{self.run}/{self.method}"


def auto_gpus_per_worker(cluster_resources: Mapping[str, float]) -> float:
    """``gpus_per_worker`` when the config leaves it to the cluster (``None``): 1 when the cluster
    (``ray.cluster_resources()``) has a whole GPU, else 0."""
    return 1.0 if float(cluster_resources.get("GPU", 0.0)) >= 1 else 0.0


def add_setting_arguments(parser: Any, *, notes: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Add the sequence command's settings to ``parser``: the groups ``methods`` (``MethodConfig``),
    ``training`` and ``Ray`` (``SequenceConfig``), generated from the fields (:func:`cl_platform.fields.add_arguments`).

    Returns the groups by title, for a command to add its own arguments to them. ``notes`` as in
    :func:`~cl_platform.fields.add_arguments`.
    """
    from cl_platform.methods.base import MethodConfig

    groups = {}
    for title, cls, group in (("methods", MethodConfig, ""), ("training", SequenceConfig, "training"),
                              ("Ray", SequenceConfig, "ray")):
        groups[title] = parser.add_argument_group(title)
        add_arguments(groups[title], cls, group=group, notes=notes)
    return groups
