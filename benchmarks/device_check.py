"""One-GPU device check at Anole-7b's shapes: the MoDE layer, then `mode` training in both teacher modes.

Three parts, each timed on the same GPU, reported in one JSON line printed last:

1. ``layer``: the MoDE layer benchmark (:func:`mode_layer.measure`) on one MLP projection of
   Anole-7b (4096 x 11008) over ``4 x 1026`` tokens in bfloat16: the fused MoDE layer, the
   reference algorithm and PEFT LoRA, forward+backward ms per call and peak memory per form.
2. ``direct``: a randomly initialised model with Anole-7b's exact decoder config (hidden 4096, MLP
   11008, 32 layers, 32 heads and KV heads, vocabulary 65,536 in Anole's layout, 4,096
   positions), built in bfloat16 on the GPU, trained in this process with the sequence recipe's
   own pieces (``build_model``, ``train_step``, the ``mode`` method, :class:`OnlineTeacher` /
   :class:`CachedTeacher`) at ``--precision bf16 --gradient-checkpointing 1``: step time, tokens
   per second and ``torch.cuda.max_memory_allocated``, next to
   :func:`cl_platform.train.memory.estimate_memory` for the same settings.
3. ``sequence``: the same model saved into a temporary ``file://`` store with two synthetic text
   tasks and a KD stream of image-generation rows, trained end to end by
   ``cl_platform.cli.sequence.main`` (Ray Train, 1 worker with 1 GPU), once with
   ``--teacher-mode online`` and once ``cached``: step time and tokens per second from the
   ledger's ``train_seconds``, the cache build from the driver's log, and the device's peak
   memory in use as ``nvidia-smi`` reports it (whole device: CUDA contexts and the allocator's
   reserve included). The Ray worker's own ``max_memory_allocated`` is what part 2 measures in
   this process with the same recipe.

Without a CUDA GPU the check exits 2 at once ("no CUDA GPU: ..."). ``--dry-run`` runs every part
on the CPU at tiny shapes (a few steps), so the script is exercised where no GPU is.

    benchmarks/device_check.sh [--dry-run] [--steps N] [--direct-steps N] [--budget-s S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, TextIO

#: Exit status when no CUDA GPU is usable (and ``--dry-run`` was not given).
NO_GPU_EXIT = 2
#: Anole's ids used to write the synthetic data (see ``cl_platform.models.modality.ANOLE``).
BOS, EOS, SEP, BOI, EOI = 0, 2, 8710, 8197, 8196
TEXT_IDS = (9000, 60000)  # [lo, hi): text ids, above the image codes 4..8195 and the markers
IMAGE_CODES = (4, 8196)
#: Seconds the cached sequence run is expected to take beyond the online one (the cache build).
CACHE_BUILD_ALLOWANCE_S = 60.0
#: Seconds past ``--budget-s`` after which the check prints what it has and stops.
HARD_LIMIT_MARGIN_S = 30.0


@dataclass(frozen=True)
class Shapes:
    """Model size and batch shapes of one check.

    Attributes:
        hidden, intermediate, layers, heads, kv_heads, max_positions: the decoder's config.
        task_batch, task_len: task rows per step and their length (all rows the same length).
        kd_batch, kd_prompt, kd_codes: KD rows per step, text ids before ``<boi>``, image codes.
        layer_size, layer_tokens: ``mode_layer`` size name and tokens per call.
        kd_rows, task_rows, eval_rows: rows written to the KD stream and to each task's splits.
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    max_positions: int
    task_batch: int
    task_len: int
    kd_batch: int
    kd_prompt: int
    kd_codes: int
    layer_size: str
    layer_tokens: int
    kd_rows: int
    task_rows: int
    eval_rows: int

    @property
    def kd_len(self) -> int:
        """Tokens of a KD row: prompt, ``<boi>``, codes, ``<eoi>``."""
        return self.kd_prompt + self.kd_codes + 2

    @property
    def tokens_per_step(self) -> int:
        """Tokens a training step trains on (task rows and KD rows, no padding)."""
        return self.task_batch * self.task_len + self.kd_batch * self.kd_len


ANOLE_7B = Shapes(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, max_positions=4096,
                  task_batch=4, task_len=256, kd_batch=4, kd_prompt=8, kd_codes=1024, layer_size="anole",
                  layer_tokens=4 * 1026, kd_rows=16, task_rows=64, eval_rows=4)
TINY = Shapes(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=2, max_positions=256,
              task_batch=2, task_len=24, kd_batch=2, kd_prompt=4, kd_codes=16, layer_size="tiny",
              layer_tokens=128, kd_rows=8, task_rows=16, eval_rows=2)


# ------------------------------------------------------------------------------ the GPU gate


def nvidia_smi_problem() -> Optional[str]:
    """Why no NVIDIA GPU is visible to ``nvidia-smi`` (``None`` when one is), without importing torch."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found (no NVIDIA driver on this machine)"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi -L failed ({exc})"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return f"nvidia-smi -L lists no GPU ({(out.stderr or out.stdout).strip()[:200]})"
    return None


def torch_cuda_problem() -> Optional[str]:
    """Why torch cannot use a CUDA GPU (``None`` when it can)."""
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (built with CUDA {torch.version.cuda})"
    return None


# ------------------------------------------------------------------------------ helpers


def gib(n: Optional[float]) -> Optional[float]:
    """Bytes as GiB (3 decimals); ``None`` stays ``None``."""
    return None if n is None else round(n / 2**30, 3)


def synchronize(device: Any) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def text_ids(rng: Any, n: int) -> list[int]:
    """``n`` random text ids."""
    return [int(x) for x in rng.integers(TEXT_IDS[0], TEXT_IDS[1], n)]


def task_row(rng: Any, length: int) -> tuple[list[int], int]:
    """A ``length``-token task row ``[bos, prompt..., sep, answer, eos]`` and its answer start."""
    prompt = text_ids(rng, length - 4)
    return [BOS, *prompt, SEP, 9100 + prompt[0] % 4, EOS], length - 2


def kd_row(rng: Any, shapes: Shapes) -> list[int]:
    """An image-generation row ``[prompt..., boi, codes..., eoi]``."""
    codes = [int(x) for x in rng.integers(IMAGE_CODES[0], IMAGE_CODES[1], shapes.kd_codes)]
    return [*text_ids(rng, shapes.kd_prompt), BOI, *codes, EOI]


def build_base(shapes: Shapes, device: Any, seed: int = 0) -> Any:
    """A randomly initialised Chameleon of ``shapes`` with Anole's vocabulary, built in bfloat16 on ``device``."""
    import torch

    from cl_platform.models.modality import ANOLE
    from cl_platform.models.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(hidden_size=shapes.hidden, intermediate_size=shapes.intermediate,
                          num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads,
                          num_key_value_heads=shapes.kv_heads, max_position_embeddings=shapes.max_positions,
                          rope_theta=10000.0, rms_norm_eps=1e-5)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = build_tiny_model(ANOLE, cfg, bos_token_id=BOS, eos_token_id=EOS, seed=seed)
    finally:
        torch.set_default_dtype(previous)
    return model.to(torch.bfloat16)


def estimate(model_config: Any, shapes: Shapes, teacher_mode: str) -> dict:
    """:func:`cl_platform.train.memory.estimate_memory` for the check's settings (bf16, checkpointing)."""
    from cl_platform.methods import MethodConfig
    from cl_platform.train.memory import estimate_memory

    est = estimate_memory(model_config, precision="bf16", gradient_checkpointing=True, batch_size=shapes.task_batch,
                          seq_len=shapes.task_len, method="mode", method_config=MethodConfig(),
                          kd_top_k=MethodConfig().kd_top_k, teacher_mode=teacher_mode,
                          kd_batch_size=shapes.kd_batch, kd_seq_len=shapes.kd_len)
    return {"estimate_gib": gib(est.total), "estimate_parts_gib": {p: gib(getattr(est, p)) for p in est.PARTS}}


@contextlib.contextmanager
def phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall seconds of the ``with`` block as ``phases[name]``."""
    t0 = time.time()
    try:
        yield
    finally:
        phases[name] = round(time.time() - t0, 1)


def guarded(errors: dict, name: str, fn: Callable[[], Any]) -> Any:
    """``fn()``; an exception is recorded under ``errors[name]`` (the check goes on) and gives ``None``."""
    try:
        return fn()
    except Exception as exc:  # one part failing must not lose the others' figures
        traceback.print_exc()
        errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
        return None


# ------------------------------------------------------------------------------ part 1: the layer


def sibling_module(name: str) -> Any:
    """The module ``benchmarks/<name>.py``, loaded from its file (``benchmarks`` is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                     f"{name}.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"benchmarks/{name}.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer_check(shapes: Shapes, device: str, iters: int, warmup: int) -> dict:
    """The MoDE layer benchmark at ``shapes``' projection size in bfloat16."""
    mode_layer = sibling_module("mode_layer")
    d_in, d_out, _ = mode_layer.SIZES[shapes.layer_size]
    result = mode_layer.measure(d_in, d_out, shapes.layer_tokens, iters=iters, warmup=warmup, device=device,
                                dtype="bfloat16")
    result["size"] = shapes.layer_size
    mode_layer.print_table(result)
    return result


# ------------------------------------------------------------------------------ part 2: in-process steps


def batches(shapes: Shapes, device: Any, seed: int, count: int = 4) -> list[tuple]:
    """``count`` (task ids, mask, labels, KD row ids, KD ids, KD mask) batches; KD row ids index :func:`kd_rows`."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    stream = kd_rows(shapes, seed)
    out = []
    for i in range(count):
        rows = [task_row(rng, shapes.task_len) for _ in range(shapes.task_batch)]
        ids = torch.tensor([r for r, _ in rows], device=device)
        labels = ids.clone()
        for b, (_, start) in enumerate(rows):
            labels[b, :start] = -100
        row_ids = [(i * shapes.kd_batch + b) % shapes.kd_rows for b in range(shapes.kd_batch)]
        kids = torch.tensor([stream[r] for r in row_ids], device=device)
        out.append((ids, torch.ones_like(ids), labels, row_ids, kids, torch.ones_like(kids)))
    return out


def kd_rows(shapes: Shapes, seed: int) -> list[list[int]]:
    """The KD stream's rows (the same rows the store's stream holds)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return [kd_row(rng, shapes) for _ in range(shapes.kd_rows)]


def timed_steps(model: Any, method: Any, teacher: Any, shapes: Shapes, device: Any, steps: int,
                warmup: int) -> dict:
    """``steps`` recipe steps (teacher targets, then ``train_step``); median time of those after ``warmup``."""
    import torch

    from cl_platform.methods import KDBatch, StepInputs
    from cl_platform.methods.kd import shifted_mask
    from cl_platform.models.modality import ANOLE
    from cl_platform.train.recipe import train_step

    data = batches(shapes, device, seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step in range(steps):
        ids, am, labels, row_ids, kids, kam = data[step % len(data)]
        synchronize(device)
        t0 = time.perf_counter()
        kd = KDBatch(input_ids=kids, attention_mask=kam, loss_mask=shifted_mask(ANOLE.is_image(kids) & kam.bool(), kam),
                     targets=teacher.batch_targets(row_ids, kids, kam, model))
        loss, terms = train_step(model, method, ids, am, labels, StepInputs(task_batch={}, kd_batch=kd, step=step),
                                 opt, precision="bf16", grad_clip=1.0)
        synchronize(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss) + sum(float(v) for v in terms.values()))
    step_s = statistics.median(times[min(warmup, steps - 1):])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"steps": steps, "step_s": round(step_s, 4), "tokens_per_step": shapes.tokens_per_step,
            "tokens_per_s_per_gpu": round(shapes.tokens_per_step / step_s, 1), "peak_allocated_gib": gib(peak),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}


def direct_check(model: Any, shapes: Shapes, device: Any, steps: int, errors: dict) -> dict:
    """Both teacher modes on the PEFT ``model`` in this process, each with its memory estimate."""
    from cl_platform.methods import MethodConfig, get_method
    from cl_platform.methods.teacher import CachedTeacher, OnlineTeacher
    from cl_platform.methods.teacher_cache import compute_teacher_cache
    from cl_platform.models.modality import ANOLE
    from cl_platform.train.recipe import build_model

    mc = MethodConfig()
    method = get_method("mode", mc)
    peft = build_model(method, model, ANOLE, gradient_checkpointing=True).train()
    method.before_task(peft, "task-a")
    out: dict[str, Any] = {}
    online = timed_steps(peft, method, OnlineTeacher(mc.kd_top_k), shapes, device, steps, warmup=2)
    out["online"] = {**online, **(guarded(errors, "estimate_online", lambda: estimate(peft.config, shapes, "online")) or {})}
    synchronize(device)
    t0 = time.perf_counter()
    cache = compute_teacher_cache(peft, kd_rows(shapes, 0), pad_id=ANOLE.pad_id, k=mc.kd_top_k,
                                  temperature=mc.kd_temperature, batch_size=4)
    synchronize(device)
    build_s = time.perf_counter() - t0
    cached = timed_steps(peft, method, CachedTeacher(cache), shapes, device, steps, warmup=2)
    out["cached"] = {**cached, "cache_build_s": round(build_s, 3), "cache_rows": len(cache),
                     "cache_mib": round(cache.ids.numel() * 6 / 2**20, 2),
                     **(guarded(errors, "estimate_cached", lambda: estimate(peft.config, shapes, "cached")) or {})}
    for mode in ("online", "cached"):
        m, e = out[mode].get("peak_allocated_gib"), out[mode].get("estimate_gib")
        out[mode]["measured_over_estimate"] = round(m / e, 3) if m and e else None
    return out


# ------------------------------------------------------------------------------ part 3: Ray sequences


def write_store(store_url: str, shapes: Shapes) -> dict:
    """Two text tasks and the KD stream (same rows as :func:`kd_rows`) in the store."""
    import numpy as np

    from cl_platform.data.task_format import write_stream, write_task
    from cl_platform.models.modality import ANOLE

    rng = np.random.default_rng(7)
    tasks = ["task-a", "task-b"]
    for name in tasks:
        train = [task_row(rng, shapes.task_len) for _ in range(shapes.task_rows)]
        evals = [task_row(rng, shapes.task_len) for _ in range(shapes.eval_rows)]
        write_task(store_url, name, {"tokens": [r for r, _ in train], "answer_start": [s for _, s in train]},
                   {"prompt_tokens": [r[:s] for r, s in evals], "answer_tokens": [r[s:s + 1] for r, s in evals]},
                   spec_id=ANOLE.spec_id, vocab_size=ANOLE.vocab_size)
    write_stream(store_url, "kd", {"tokens": kd_rows(shapes, 0)}, spec_id=ANOLE.spec_id, vocab_size=ANOLE.vocab_size)
    return {"tasks": tasks, "kd_stream": "kd"}


class DevicePeak:
    """The largest ``memory.used`` ``nvidia-smi`` reports while the context runs (every process on GPU 0)."""

    def __init__(self) -> None:
        self.peak_mib: Optional[float] = None
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "DevicePeak":
        exe = shutil.which("nvidia-smi")
        if exe:
            self._proc = subprocess.Popen([exe, "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                           "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self.peak_mib = max(self.peak_mib or 0.0, float(line.strip()))

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


class Tee:
    """Writes to ``stream`` and keeps the lines, for the driver's log lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.text = stream, []

    def write(self, s: str) -> int:
        self.text.append(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def captured_stdout() -> Iterator[Tee]:
    """``sys.stdout`` teed for the duration."""
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield tee


def sequence_run(store_url: str, data: dict, shapes: Shapes, teacher_mode: str, steps: int, gpus: int) -> dict:
    """``cl_platform.cli.sequence.main`` with ``mode``, bf16, checkpointing and ``teacher_mode``; its figures."""
    from cl_platform.cli.sequence import main as sequence_main
    from cl_platform.store import Store
    from cl_platform.train.ledger import Ledger

    run = f"device-{teacher_mode}"
    argv = ["--store", store_url, "--tasks", ",".join(data["tasks"]), "--model", "models/base",
            "--kd-stream", data["kd_stream"], "--method", "mode", "--run", run, "--steps", str(steps),
            "--batch-size", str(shapes.task_batch), "--kd-batch-size", str(shapes.kd_batch), "--precision", "bf16",
            "--gradient-checkpointing", "1", "--teacher-mode", teacher_mode, "--workers", "1",
            "--gpus-per-worker", str(gpus), "--eval-batch-size", str(shapes.eval_rows), "--log-every", str(steps)]
    t0 = time.time()
    with DevicePeak() as peak, captured_stdout() as out:
        rc = sequence_main(argv)
    wall = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"cl_platform.cli.sequence.main exited {rc}")
    rounds = [r for r in Ledger.open(Store(store_url), run).rounds if r.status == "done"]
    train_s = [float(r.metrics["train_seconds"]) for r in rounds]
    step_s = sum(train_s) / (steps * len(train_s))
    built = re.search(r"teacher cache: .*?, ([\d.]+) MiB, built by .*? in ([\d.]+)s", "".join(out.text))
    return {"rounds": len(rounds), "steps_per_round": steps, "wall_s": round(wall, 1),
            "round_train_s": [round(s, 2) for s in train_s], "step_s": round(step_s, 4),
            "tokens_per_step": shapes.tokens_per_step,
            "tokens_per_s_per_gpu": round(shapes.tokens_per_step / step_s, 1),
            "peak_device_used_gib": round(peak.peak_mib / 1024, 3) if peak.peak_mib is not None else None,
            "cache_mib": float(built.group(1)) if built else None,
            "cache_build_s": float(built.group(2)) if built else None}


def sequence_check(out: dict, store_url: str, shapes: Shapes, steps: int, gpus: int, deadline: float,
                   errors: dict) -> None:
    """Both teacher modes end to end on one local Ray, each run's figures into ``out`` as it ends. A
    run is skipped when it would end after ``deadline``: the cached run is expected to take the
    online run's time plus :data:`CACHE_BUILD_ALLOWANCE_S` (its actor loads the base and builds the cache)."""
    import ray

    from cl_platform.train.resources import init_ray

    if time.time() > deadline:
        errors["sequence"] = "skipped: no time left of --budget-s"
        return
    data = write_store(store_url, shapes)
    started = init_ray(None)
    expected = 0.0
    try:
        for mode in ("online", "cached"):
            if time.time() + expected > deadline:
                errors[f"sequence_{mode}"] = (f"skipped: about {expected:.0f}s needed, "
                                              f"{max(0.0, deadline - time.time()):.0f}s of --budget-s left")
                continue
            t0 = time.time()
            out[mode] = guarded(errors, f"sequence_{mode}",
                                lambda: sequence_run(store_url, data, shapes, mode, steps, gpus))
            expected = time.time() - t0 + CACHE_BUILD_ALLOWANCE_S
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------ main


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="run every part on the CPU at tiny shapes")
    p.add_argument("--steps", type=int, default=None, help="steps per task of each sequence (default 16; 2 dry)")
    p.add_argument("--direct-steps", type=int, default=None, help="in-process steps per teacher mode (default 10; 3 dry)")
    p.add_argument("--layer-iters", type=int, default=None, help="timed calls per layer form (default 10; 1 dry)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="the whole check's time: a sequence run that would end later is skipped (said in errors); "
                        f"{HARD_LIMIT_MARGIN_S:.0f}s later the check prints what it has and stops")
    p.add_argument("--skip-sequence", action="store_true", help="parts 1 and 2 only")
    p.add_argument("--workdir", default=None, help="where the temporary store goes (default: a temporary directory)")
    return p.parse_args(argv)


def run_checks(args: argparse.Namespace, t_start: float, result: dict, temp_dirs: list[str]) -> None:
    """Every part, each guarded, filling ``result`` (the JSON line's) as it goes; its temporary
    directory is listed in ``temp_dirs`` while it exists."""
    import torch

    dry = args.dry_run
    if dry:
        torch.set_num_threads(1)  # tiny shapes: more threads only contend on a shared machine
    shapes = TINY if dry else ANOLE_7B
    device = torch.device("cpu" if dry else "cuda")
    steps = args.steps or (2 if dry else 16)
    errors: dict[str, str] = result["errors"]
    result.update({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "shapes": {**asdict(shapes), "kd_len": shapes.kd_len}, "precision": "bf16",
                   "gradient_checkpointing": 1})
    phases: dict[str, float] = {}
    result["phase_s"] = phases
    with phase(phases, "layer"):
        result["layer"] = guarded(errors, "layer",
                                  lambda: layer_check(shapes, device.type, args.layer_iters or (1 if dry else 10),
                                                      warmup=1 if dry else 3))
    workdir = tempfile.mkdtemp(prefix="device_check_", dir=args.workdir)
    temp_dirs.append(workdir)
    store_url = f"file://{workdir}/store"
    try:
        with phase(phases, "model_build"):
            model = build_base(shapes, device)
        result["model"] = {k: getattr(model.config, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings")}
        with phase(phases, "model_save"):
            model.save_pretrained(os.path.join(workdir, "store", "models", "base"))
        with phase(phases, "direct"):
            result["direct"] = guarded(errors, "direct", lambda: direct_check(
                model, shapes, device, args.direct_steps or (3 if dry else 10), errors))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.skip_sequence:
            result["sequence"] = {}
            with phase(phases, "sequence"):
                sequence_check(result["sequence"], store_url, shapes, steps, 0 if dry else 1,
                               t_start + args.budget_s, errors)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    """The check; exit 0 when every part ran, 1 when one failed, 2 without a CUDA GPU (no ``--dry-run``)."""
    args = parse_args(argv)
    t_start = time.time()
    if not args.dry_run:
        problem = nvidia_smi_problem() or torch_cuda_problem()
        if problem:
            print(f"no CUDA GPU: {problem}; the device check needs one (--dry-run runs it on the CPU at tiny shapes)",
                  file=sys.stderr)
            return NO_GPU_EXIT
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray on this machine, never a cluster's
    result: dict[str, Any] = {"check": "device", "dry_run": args.dry_run, "errors": {}}
    temp_dirs: list[str] = []
    watchdog = threading.Timer(args.budget_s + HARD_LIMIT_MARGIN_S, hard_stop, (result, t_start, temp_dirs))
    watchdog.daemon = True
    watchdog.start()
    try:
        run_checks(args, t_start, result, temp_dirs)
    except Exception as exc:
        traceback.print_exc()
        result["errors"]["check"] = f"{type(exc).__name__}: {exc}"[:2000]
    watchdog.cancel()
    print_result(result, t_start)
    return 1 if result["errors"] else 0


def print_result(result: dict, t_start: float) -> None:
    """The JSON line, last on stdout."""
    result["wall_s"] = round(time.time() - t_start, 1)
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)


def hard_stop(result: dict, t_start: float, temp_dirs: list[str]) -> None:
    """Past the hard limit: print what was measured so far, remove the temporary store and end the
    process (a hung part cannot be interrupted from here)."""
    result["errors"]["check"] = f"stopped after {time.time() - t_start:.0f}s: --budget-s plus {HARD_LIMIT_MARGIN_S:.0f}s"
    print_result(result, t_start)
    for path in temp_dirs:
        shutil.rmtree(path, ignore_errors=True)
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
