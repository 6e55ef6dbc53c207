"""How much memory one training step takes: a model from the architecture's numbers, and a measurement.

:func:`estimate_memory` is a pure function of a transformers-like config (``hidden_size``,
``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``vocab_size``: a ``ChameleonConfig``, a ``LlamaConfig``, or a mapping with those keys), the
method's adapter and the step's settings. It returns a :class:`MemoryEstimate` with the bytes of
each part of the peak of one step of :func:`cl_platform.train.recipe.train_step`: forward of the
task batch (answer-only cross-entropy), forward of the KD batch (KD loss on the teacher's top-K),
one backward of their sum, gradient clipping, AdamW step.

What each part counts (``A`` adapter parameters, ``P`` frozen parameters, ``b`` the compute
dtype's bytes: 4 in fp32, 2 in bf16):

- ``base_weights``: ``P * b`` (embedding, decoder layers, final norm, LM head; Chameleon's VQ
  image tokenizer, 29 M parameters in Anole-7b, and the rotary tables are not counted);
- ``adapters``: ``4 A`` (adapters are float32 in both precisions);
- ``gradients``: ``4 A`` (float32; the frozen base has none);
- ``optimizer``: ``8 A``: AdamW's two float32 moments. There is no separate float32 master copy:
  the float32 adapter parameters are their own master, only the frozen base is in bfloat16;
- ``activations``: what autograd keeps for the backward, for the task and the KD batch together
  (both graphs live until the single backward): per token and decoder layer
  :data:`ACTIVATION_COEFFICIENTS` bytes per hidden unit, per MLP unit and per adapter rank unit
  (counted with ``saved_tensors_hooks`` on transformers' Chameleon decoder layer with MoDE on
  the MLP; attention through SDPA keeps no ``seq x seq`` matrix), plus the embedding output and
  the final norm. With gradient checkpointing: each layer's input (``h * b`` per token and
  layer);
- ``logits``: the ``batch x seq x vocab`` tensors around the losses at the larger of two
  moments: the task cross-entropy (:data:`TASK_LOGITS_BYTES` per task token and id), or the KD
  batch (the task's float32 log-softmax kept for the backward plus :data:`KD_LOGITS_COPIES`
  KD-batch logits in the compute dtype, plus with ``teacher_mode="online"`` the teacher's logits
  of the KD batch, counted as if its forward ran with the student's graphs alive: an upper
  bound, the recipe runs the teacher before the step's forwards). At Anole's vocabulary of
  65,536 this part dominates short rows;
- ``kd_targets``: the teacher's top-K ids and log-probs of the KD batch as cached (int32 +
  float16) plus what ``kd_loss`` keeps (the int64 gather index and the float32 ``[N, K]``
  intermediates): ``KD_TARGET_BYTES_PER_K`` bytes per position and K;
- ``workspace``: the backward's transient gradients of one decoder layer (about
  :data:`WORKSPACE_COEFFICIENT` x the widest layer activation of the larger batch, in float32)
  and, with gradient checkpointing, the activations of the one layer being recomputed.

The peak (:attr:`MemoryEstimate.total`) is everything resident (weights, adapters, gradients,
optimizer state, KD targets, activations) plus the larger of ``logits`` and ``workspace``: the
logits' buffers are freed once the LM head's backward has run, before the decoder layers'
backward (and their recomputation) starts.

:func:`measure_training_step` runs one such step on a randomly initialised tiny Chameleon of
any size on the CPU, in a child process, and returns the peak resident memory it added.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

#: Bytes kept for the backward, by precision: per token and decoder layer, per unit of hidden
#: size, of MLP intermediate size, of adapter rank units (each adapted projection's
#: ``E * r_text + r_image + E``) and per attention head; ``dropout_hidden`` / ``dropout_intermediate``
#: are what adapter dropout adds; ``adapter_copy``: bytes per adapter parameter of a layer (MoDE's
#: stacked A and B, autocast's bfloat16 copies), once per layer; ``outside``: per token and unit of
#: hidden size outside the layers (negative: the first layer's attention keeps nothing, as no
#: gradient flows below the first adapter; the embedding output, final norm and LM head input
#: add back). Counted exactly with ``torch.autograd.graph.saved_tensors_hooks`` on transformers'
#: Chameleon with MoDE on the MLP (SDPA attention keeps no ``seq x seq`` matrix).
ACTIVATION_COEFFICIENTS: dict[str, dict[str, float]] = {
    "fp32": {"hidden": 35.75, "intermediate": 15.88, "rank": 8.0, "head": 28.0, "dropout_hidden": 16.0,
             "dropout_intermediate": 8.0, "adapter_copy": 4.0, "outside": -30.2},
    "bf16": {"hidden": 28.0, "intermediate": 10.0, "rank": 4.0, "head": 26.0, "dropout_hidden": 8.0,
             "dropout_intermediate": 4.0, "adapter_copy": 2.0, "outside": -17.3},
}
#: Bytes per task token and vocabulary id at the cross-entropy's peak, by precision: in fp32 the
#: logits, their contiguous copy and the log-softmax kept for the backward (3 x 4); in bf16 the
#: bfloat16 logits, their float32 copy, the log-softmax and the bfloat16 gradient (2 + 4 + 4 + 2,
#: measured). The backward's start holds as much (log-softmax, its gradient, the logits' gradient).
TASK_LOGITS_BYTES: dict[str, float] = {"fp32": 12.0, "bf16": 12.0}
#: ``batch x seq x vocab`` tensors in the logits' dtype of the KD batch (its logits and their
#: gradient), held with the task's float32 log-softmax.
KD_LOGITS_COPIES = 2.0
#: Bytes per KD position and teacher id: cached int32 id + float16 log-prob (6), the int64 gather
#: index (8), float32 intermediates of the renormalised KL (about 4 x 4).
KD_TARGET_BYTES_PER_K = 30.0
#: The backward's transient float32 gradients, in widest-activations (``max(h, i)`` per token) of
#: one decoder layer of the larger batch.
WORKSPACE_COEFFICIENT = 4.0

_GIB = 1024**3

#: Anole-7b's (Chameleon-7B's) numbers, for ``transformers.ChameleonConfig(**ANOLE_7B)``.
ANOLE_7B: dict[str, int] = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 65536,
                            "max_position_embeddings": 4096}

#: The tiny-Chameleon sizes the estimate is checked against on the CPU: name -> (model numbers,
#: task batch, sequence length, KD batch).
CHECK_SIZES: dict[str, tuple[dict[str, int], int, int, int]] = {
    "0.8M": ({"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
              "vocab_size": 1024}, 16, 128, 8),
    "7M": ({"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
            "vocab_size": 8192}, 8, 128, 4),
    "59M": ({"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
             "vocab_size": 32768}, 4, 256, 2),
}


def _bytes_of(precision: str) -> int:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return 2 if precision == "bf16" else 4


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on.

    Attributes:
        hidden_size: width of the residual stream (h).
        intermediate_size: width of the SwiGLU MLP (i).
        num_hidden_layers: decoder layers (L).
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention below the head count).
        vocab_size: vocabulary (V), the width of the logits.
        tie_word_embeddings: the LM head shares the input embedding.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @classmethod
    def of(cls, config: Any) -> "ModelShape":
        """The shape of a transformers config (or any object or mapping with the same names);
        ``num_key_value_heads`` defaults to the head count."""
        get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "vocab_size") if get(k) is None]
        if missing:
            raise ValueError(f"model config {type(config).__name__} lacks {', '.join(missing)}")
        heads = int(get("num_attention_heads"))
        return cls(hidden_size=int(get("hidden_size")), intermediate_size=int(get("intermediate_size")),
                   num_hidden_layers=int(get("num_hidden_layers")), num_attention_heads=heads,
                   num_key_value_heads=int(get("num_key_value_heads") or heads), vocab_size=int(get("vocab_size")),
                   tie_word_embeddings=bool(get("tie_word_embeddings", False)))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` of each linear layer of a decoder layer, by module name."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.num_attention_heads, self.num_key_value_heads
        d = self.head_dim
        return {"q_proj": (h, q * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (q * d, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def base_parameters(self) -> int:
        """Frozen parameters: embedding, decoder layers (linears, q/k LayerNorms, two RMSNorms),
        final norm, LM head (unless tied)."""
        h, d = self.hidden_size, self.head_dim
        linears = sum(a * b for a, b in self.linear_shapes().values())
        norms = 2 * h + 2 * d * (self.num_attention_heads + self.num_key_value_heads)
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * (linears + norms) + h + head


@dataclass(frozen=True)
class AdapterShape:
    """The trainable adapter of a method (:mod:`cl_platform.methods`).

    Attributes:
        method: ``mode``/``mode_nokd`` (E text experts + router + visual LoRA), ``moe_lora`` (E
            experts + router), ``seq_lora`` (one LoRA of rank ``r_text``).
        r_text: rank of each text expert (or of the LoRA).
        r_image: rank of the visual LoRA (MoDE).
        num_experts: text experts (E).
        target_modules: adapted linear layers of every decoder layer.
        lora_dropout: dropout on the adapter input (> 0 keeps the dropped-out inputs too).
    """

    method: str = "mode"
    r_text: int = 8
    r_image: int = 8
    num_experts: int = 4
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    lora_dropout: float = 0.05

    @classmethod
    def of(cls, method: str, method_config: Any = None) -> "AdapterShape":
        """From a method name and a ``MethodConfig`` (or a mapping of its fields; defaults when None)."""
        if method not in ("mode", "mode_nokd", "moe_lora", "seq_lora"):
            raise ValueError(f"no adapter shape for method {method!r} (mode, mode_nokd, moe_lora, seq_lora)")
        c = method_config if method_config is not None else {}
        get = c.get if isinstance(c, Mapping) else (lambda k, d=None: getattr(c, k, d))
        d = cls()
        return cls(method=method, r_text=int(get("r_text", d.r_text)), r_image=int(get("r_image", d.r_image)),
                   num_experts=int(get("num_experts", d.num_experts)),
                   target_modules=tuple(get("target_modules", d.target_modules)),
                   lora_dropout=float(get("lora_dropout", d.lora_dropout)))

    def _module_dims(self, shape: ModelShape) -> list[tuple[int, int]]:
        linears = shape.linear_shapes()
        unknown = [m for m in self.target_modules if m not in linears]
        if unknown:
            raise ValueError(f"target modules {unknown} are not linear layers of a decoder layer ({', '.join(linears)})")
        return [linears[m] for m in self.target_modules]

    def _rank_and_router(self) -> tuple[int, int]:
        """Total LoRA rank per adapted layer, and router rows."""
        if self.method == "seq_lora":
            return self.r_text, 0
        visual = self.r_image if self.method in ("mode", "mode_nokd") else 0
        return self.num_experts * self.r_text + visual, self.num_experts

    def parameters(self, shape: ModelShape) -> int:
        """Trainable parameters over all decoder layers."""
        rank, router = self._rank_and_router()
        per_layer = sum(rank * (d_in + d_out) + router * d_in for d_in, d_out in self._module_dims(shape))
        return shape.num_hidden_layers * per_layer

    def rank_units(self, shape: ModelShape) -> int:
        """Adapter hidden units per token and decoder layer (rank plus router outputs, summed over
        the adapted layers): what the adapters add to the activations."""
        rank, router = self._rank_and_router()
        return len(self._module_dims(shape)) * (rank + router)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of one training step's peak (see the module doc for what each counts).

    Attributes:
        base_weights: the frozen base model.
        adapters: the float32 adapter parameters.
        gradients: their float32 gradients.
        optimizer: AdamW's two float32 moments per adapter parameter.
        activations: tensors kept for the backward (task and KD batch).
        logits: the ``batch x seq x vocab`` tensors around the losses (and an online teacher's).
        kd_targets: the teacher's top-K targets of the KD batch and the KD loss's ``[N, K]`` tensors.
        workspace: the backward's transient per-layer gradients (and the recomputed layer).
        settings: what the estimate was made for (precision, checkpointing, batch, ...).
    """

    base_weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    kd_targets: int
    workspace: int
    settings: dict = field(default_factory=dict, compare=False)

    PARTS = ("base_weights", "adapters", "gradients", "optimizer", "activations", "logits", "kd_targets", "workspace")

    @property
    def total(self) -> int:
        """The peak of one step: every resident part, plus the larger of ``logits`` and
        ``workspace`` (they are never held at once)."""
        resident = sum(getattr(self, p) for p in self.PARTS if p not in ("logits", "workspace"))
        return resident + max(self.logits, self.workspace)

    def fits(self, gpu_bytes: float, *, reserve: float = 0.1) -> bool:
        """Whether the step fits a device of ``gpu_bytes``, keeping ``reserve`` (a fraction) for the
        CUDA context, the allocator's fragmentation and the communication buffers."""
        if not 0 <= reserve < 1:
            raise ValueError(f"reserve must be in [0, 1), got {reserve!r}")
        return self.total <= gpu_bytes * (1.0 - reserve)

    def to_dict(self) -> dict[str, Any]:
        """Each part and the total in bytes, and the settings."""
        d = {p: getattr(self, p) for p in self.PARTS}
        return {**d, "total": self.total, "settings": dict(self.settings)}

    def table(self) -> str:
        """The parts and the total in GiB, one per line."""
        rows = [f"{p:<13} {getattr(self, p) / _GIB:9.3f} GiB" for p in self.PARTS]
        return "\n".join(rows + [f"{'total':<13} {self.total / _GIB:9.3f} GiB"])


def _activations(shape: ModelShape, adapter: AdapterShape, precision: str, checkpointing: bool,
                 task_tokens: int, kd_tokens: int) -> int:
    """Saved-for-backward bytes of both batches."""
    c, b = ACTIVATION_COEFFICIENTS[precision], _bytes_of(precision)
    h, L = shape.hidden_size, shape.num_hidden_layers
    tokens = task_tokens + kd_tokens
    if not checkpointing:  # one layer's activations per token, the adapter copies of each batch's graph
        graphs = 1 + (kd_tokens > 0)
        return int(L * (_layer_activations(shape, adapter, precision, tokens)
                        + (graphs - 1) * _layer_activations(shape, adapter, precision, 0)) + tokens * c["outside"] * h)
    return int(tokens * L * h * b)  # each layer's input


def _layer_activations(shape: ModelShape, adapter: AdapterShape, precision: str, tokens: int) -> int:
    """Bytes one decoder layer keeps for the backward for ``tokens`` tokens (all at once, or while it is recomputed)."""
    c = ACTIVATION_COEFFICIENTS[precision]
    h, i = shape.hidden_size, shape.intermediate_size
    drop = adapter.lora_dropout > 0
    per_token = ((c["hidden"] + drop * c["dropout_hidden"]) * h + (c["intermediate"] + drop * c["dropout_intermediate"]) * i
                 + c["rank"] * adapter.rank_units(shape) + c["head"] * shape.num_attention_heads)
    return int(tokens * per_token + c["adapter_copy"] * adapter.parameters(shape) / shape.num_hidden_layers)


def estimate_memory(
    model_config: Any,
    *,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    batch_size: int,
    seq_len: int,
    method: str = "mode",
    method_config: Any = None,
    kd_top_k: int = 256,
    teacher_mode: str = "cached",
    kd_batch_size: int = 0,
    kd_seq_len: Optional[int] = None,
) -> MemoryEstimate:
    """The peak memory of one training step (module doc: what each part counts).

    Args:
        model_config: a transformers config (``ChameleonConfig``, ``LlamaConfig``) or a mapping
            with its size fields (:meth:`ModelShape.of`).
        precision: ``fp32`` or ``bf16`` (``SequenceConfig.precision``).
        gradient_checkpointing: each decoder layer recomputed in the backward.
        batch_size, seq_len: task rows per step and their (padded) length.
        method, method_config: the adapter (:meth:`AdapterShape.of`; ``MethodConfig`` defaults).
        kd_top_k: teacher ids per KD position (K).
        teacher_mode: ``cached`` (top-K targets read from the teacher cache) or ``online`` (the
            frozen base runs on the KD batch in the step, its logits counted).
        kd_batch_size: KD rows per step (0: no KD batch, e.g. ``seq_lora``).
        kd_seq_len: their length (default ``seq_len``; 1026 for one Anole image with its markers).
    """
    if teacher_mode not in ("cached", "online"):
        raise ValueError(f"teacher_mode must be 'cached' or 'online', got {teacher_mode!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1), ("kd_batch_size", kd_batch_size, 0),
                             ("kd_top_k", kd_top_k, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    b = _bytes_of(precision)
    shape = ModelShape.of(model_config)
    adapter = AdapterShape.of(method, method_config)
    kd_len = seq_len if kd_seq_len is None else int(kd_seq_len)
    task_tokens, kd_tokens = batch_size * seq_len, kd_batch_size * kd_len
    a = adapter.parameters(shape)
    V = shape.vocab_size
    kd_phase = task_tokens * V * 4 + (KD_LOGITS_COPIES + (teacher_mode == "online")) * kd_tokens * V * b
    logits = max(TASK_LOGITS_BYTES[precision] * task_tokens * V, kd_phase if kd_tokens else 0)
    widest = max(shape.hidden_size, shape.intermediate_size)
    settings = {"precision": precision, "gradient_checkpointing": bool(gradient_checkpointing),
                "batch_size": batch_size, "seq_len": seq_len, "kd_batch_size": kd_batch_size, "kd_seq_len": kd_len,
                "kd_top_k": kd_top_k, "teacher_mode": teacher_mode, "method": method,
                "base_parameters": shape.base_parameters(), "adapter_parameters": a}
    return MemoryEstimate(
        base_weights=shape.base_parameters() * b,
        adapters=4 * a,
        gradients=4 * a,
        optimizer=8 * a,
        activations=_activations(shape, adapter, precision, bool(gradient_checkpointing), task_tokens, kd_tokens),
        logits=int(logits),
        kd_targets=int(KD_TARGET_BYTES_PER_K * kd_tokens * kd_top_k),
        workspace=int(WORKSPACE_COEFFICIENT * max(task_tokens, kd_tokens) * widest * 4)
        + (_layer_activations(shape, adapter, precision, max(task_tokens, kd_tokens)) if gradient_checkpointing else 0),
        settings=settings,
    )


def gpu_table(model_config: Any, *, gpus_gb: tuple[int, ...] = (24, 40, 80), batches: tuple[int, ...] = (1, 4),
              seq_lens: tuple[int, ...] = (1026, 4096), kd_seq_len: int = 1026, **kwargs: Any) -> list[dict[str, Any]]:
    """One row per precision x checkpointing x batch x task length: the estimate's total (GB,
    10^9 bytes) and the GPUs of ``gpus_gb`` it fits (:meth:`MemoryEstimate.fits`), with a KD batch
    as large as the task batch of ``kd_seq_len`` tokens. ``kwargs`` go to :func:`estimate_memory`."""
    rows = []
    for precision in ("fp32", "bf16"):
        for checkpointing in (False, True):
            for batch in batches:
                for seq in seq_lens:
                    e = estimate_memory(model_config, precision=precision, gradient_checkpointing=checkpointing,
                                        batch_size=batch, seq_len=seq, kd_batch_size=batch, kd_seq_len=kd_seq_len,
                                        **kwargs)
                    rows.append({"precision": precision, "gradient_checkpointing": checkpointing, "batch_size": batch,
                                 "seq_len": seq, "total_gb": round(e.total / 1e9, 1),
                                 "fits_gb": [g for g in gpus_gb if e.fits(g * 1e9)]})
    return rows


# ---------------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class StepMeasurement:
    """Resident memory of one training step of a tiny Chameleon on the CPU (bytes).

    Attributes:
        resident: what the model, adapters, gradients and optimizer state hold between steps.
        step_peak: how far the step's peak rose above ``resident``.
        total: ``resident + step_peak`` (comparable to :attr:`MemoryEstimate.total`).
        step_seconds: wall time of the measured step.
        loss: the task loss of the measured step.
    """

    resident: int
    step_peak: int
    total: int
    step_seconds: float
    loss: float


def measure_training_step(
    model_config: Mapping[str, int],
    *,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    batch_size: int,
    seq_len: int,
    method: str = "mode",
    kd_batch_size: int = 0,
    kd_top_k: int = 16,
    threads: int = 1,
    timeout: float = 600.0,
) -> StepMeasurement:
    """Build a tiny Chameleon of ``model_config``'s size (``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``vocab_size``) and time and measure the second
    of two :func:`~cl_platform.train.recipe.train_step` calls, in a child process.

    The child fixes glibc's mmap threshold (64 KiB), so freed tensors leave the resident set at
    once, and resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) before the step;
    the KD batch uses random cached targets. Linux only.
    """
    spec = {"model": dict(model_config), "precision": precision, "gradient_checkpointing": bool(gradient_checkpointing),
            "batch_size": batch_size, "seq_len": seq_len, "method": method, "kd_batch_size": kd_batch_size,
            "kd_top_k": kd_top_k, "threads": threads}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-m", "cl_platform.train.memory", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measure_training_step({spec}) failed:\n{proc.stderr[-3000:]}")
    return StepMeasurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_runtime(precision: str = "fp32") -> int:
    """The resident memory a training step costs whatever the model: the total of a one-layer,
    64-wide model's step (allocator arenas, oneDNN and OpenMP state, autograd's engine). Subtract
    it from :attr:`StepMeasurement.total` to compare with :func:`estimate_memory`; on a GPU the
    estimate's ``fits(reserve=...)`` covers the CUDA context instead."""
    tiny = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 128}
    return measure_training_step(tiny, precision=precision, batch_size=1, seq_len=8, kd_batch_size=1).total


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _measure_in_this_process(spec: Mapping[str, Any]) -> StepMeasurement:
    """The child's side of :func:`measure_training_step`."""
    import gc

    import torch

    from cl_platform.methods import KDBatch, MethodConfig, StepInputs, get_method
    from cl_platform.methods.kd import TeacherTargets
    from cl_platform.models.modality import ModalitySpec
    from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
    from cl_platform.train.recipe import base_dtype, build_model, train_step

    torch.set_num_threads(int(spec["threads"]))
    m = dict(spec["model"])
    V, B, S, Bk, K = int(m.pop("vocab_size")), spec["batch_size"], spec["seq_len"], spec["kd_batch_size"], spec["kd_top_k"]
    vocab = ModalitySpec(spec_id="mem", vocab_size=V, image_code_range=(V // 2, V - 2), boi_id=V - 2, eoi_id=V - 1,
                         pad_id=0, sep_id=3)
    tiny = TinyModelConfig(**m, max_position_embeddings=max(256, S))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V // 2, (B, S), generator=g)
    labels = ids.clone()
    labels[:, : S // 2] = -100
    kd = None
    if Bk:
        kids = torch.randint(V // 2, V, (Bk, S), generator=g)
        targets = TeacherTargets(torch.randint(0, V, (Bk, S, K), generator=g, dtype=torch.int32),
                                 -torch.rand(Bk, S, K, generator=g).to(torch.float16) * 10)
        kd = KDBatch(kids, torch.ones_like(kids), torch.ones_like(kids, dtype=torch.bool), targets)
    gc.collect()
    before = _status_bytes("VmRSS")
    method = get_method(spec["method"], MethodConfig())
    base = build_tiny_model(vocab, tiny, seed=0).to(base_dtype(spec["precision"]))
    model = build_model(method, base, vocab, gradient_checkpointing=spec["gradient_checkpointing"]).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = StepInputs(task_batch={}, kd_batch=kd)

    def step() -> float:
        loss, _ = train_step(model, method, ids, torch.ones_like(ids), labels, inputs, opt,
                             precision=spec["precision"], grad_clip=1.0)
        return float(loss)

    step()
    gc.collect()
    resident = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set size
    t0 = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - t0
    peak = _status_bytes("VmHWM")
    return StepMeasurement(resident=resident - before, step_peak=peak - resident, total=peak - before,
                           step_seconds=seconds, loss=loss)


if __name__ == "__main__":
    print(json.dumps(asdict(_measure_in_this_process(json.loads(sys.argv[1])))))
