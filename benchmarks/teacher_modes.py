"""The two KD teacher modes compared: what the cache costs to build and store, and what each mode costs a step.

On a tiny Chameleon-architecture model (the digits base's size: hidden 128, 3 layers, 4 heads,
MLP 256) with MoDE adapters (trained-looking: B drawn at random, so the student differs from the
teacher) and a synthetic KD stream of image-generation rows:

- cache build: :func:`cl_platform.methods.teacher_cache.compute_teacher_cache` in this process
  (after a warm-up call; median of 3), and :func:`cl_platform.train.teacher_build.build_teacher_cache` (a Ray Data job over 1 and 2
  actors on a local Ray, shards written to a ``file://`` store; each actor loads the saved base and
  warms up itself): seconds and bytes, and how far its targets are from the in-process cache's;
- KD step: a forward and backward of the student with ``kd_loss`` on a KD batch, its targets
  from :class:`~cl_platform.methods.teacher.CachedTeacher` (the in-memory cache) or :class:`~cl_platform.methods.teacher.OnlineTeacher` (a no-grad
  forward of the frozen base in the step): median ms, the two modes timed in turn, and the
  targets alone;
- loss agreement: ``|KD(cached) - KD(online)| / KD(online)`` over every batch of the stream
  (float16 rounding of the stored log-probs is the only difference).

Prints a table, then one JSON line last.

    python benchmarks/teacher_modes.py [--rows 300] [--codes 64] [--k 256] [--iters 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Optional

import torch

from cl_platform.methods import MethodConfig, get_method
from cl_platform.methods.kd import kd_loss, shifted_mask
from cl_platform.methods.teacher import CachedTeacher, OnlineTeacher, TeacherSource
from cl_platform.methods.teacher_cache import compute_teacher_cache
from cl_platform.models.modality import ModalitySpec
from cl_platform.models.tiny import TinyModelConfig, build_tiny_model, count_parameters

#: A small vocabulary: text ids 6..511, image codes 512..1023, markers 4 (<boi>) and 5 (<eoi>).
SPEC = ModalitySpec(spec_id="teacher-bench", vocab_size=1024, image_code_range=(512, 1024), boi_id=4, eoi_id=5,
                    pad_id=0, sep_id=3, image_token_ranges=((512, 1024), (4, 6)), eos_id=2)


def kd_stream(rows: int, codes: int, seed: int = 0) -> list[list[int]]:
    """``rows`` rows ``[bos, prompt (4-8 text ids), boi, codes image codes, eoi]``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rows):
        prompt = torch.randint(6, 512, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist()
        image = torch.randint(512, 1024, (codes,), generator=g).tolist()
        out.append([1, *prompt, SPEC.boi_id, *image, SPEC.eoi_id])
    return out


def student(base: torch.nn.Module) -> torch.nn.Module:
    """MoDE adapters on ``base`` (in place) whose B matrices are drawn at random (a student that moved)."""
    model = get_method("mode", MethodConfig(lora_dropout=0.0)).build(base, SPEC)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "_B" in name:
                p.normal_(std=0.02)
    return model.train()


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask of ``rows``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), SPEC.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


def kd_step(model: torch.nn.Module, teacher: TeacherSource, rows: list[list[int]], row_ids: list[int],
            temperature: float) -> float:
    """One KD step: the teacher's targets, the student's forward, ``kd_loss``, backward; the loss."""
    ids, mask = padded([rows[r] for r in row_ids])
    targets = teacher.batch_targets(row_ids, ids, mask, model)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    loss = kd_loss(logits, targets, shifted_mask(SPEC.is_image(ids) & mask.bool(), mask), temperature)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss.detach())


def median_ms(fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
    """Median wall milliseconds of ``fn()`` over ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_ms(fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 2) -> dict[str, float]:
    """Median wall milliseconds of each function, called in turn (one call of each per round), so
    that a busy machine slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def ray_builds(rows: list[list[int]], k: int, temperature: float, actors: list[int], rows_per_shard: int,
               workdir: str) -> tuple[dict, Any]:
    """:func:`build_teacher_cache` of the base saved at ``<workdir>/store/models/base`` with each actor
    count on one local Ray; their figures, and the last sharded cache."""
    import pyarrow as pa
    import ray

    from cl_platform.store import Store
    from cl_platform.train.teacher_build import build_teacher_cache

    store = Store(f"file://{workdir}/store")
    t0 = time.time()
    ray.init(num_cpus=max(actors), include_dashboard=False, log_to_driver=False)
    figures: dict[str, Any] = {"ray_start_s": round(time.time() - t0, 2)}
    sharded = None
    try:
        for n in actors:
            t0 = time.time()
            sharded = build_teacher_cache(store, store.uri("models/base"), pa.array(rows, pa.list_(pa.int32())),
                                          prefix=f"cache/a{n}", pad_id=SPEC.pad_id, k=k, temperature=temperature,
                                          key=f"bench-{n}", actors=n, rows_per_shard=rows_per_shard,
                                          log=lambda m: None)
            figures[f"actors_{n}"] = {"build_s": round(time.time() - t0, 2), "bytes": int(sharded.index["bytes"]),
                                      "shards": len(sharded.index["shards"])}
    finally:
        ray.shutdown()
    return figures, sharded


def agreement(got: Any, want: Any) -> dict:
    """How far the Ray-built cache's targets are from the in-process cache's: the fraction of equal
    ids and the largest log-prob difference (padding included, where both hold zeros)."""
    return {"ids_equal_fraction": round(float((got.ids == want.ids).float().mean()), 6),
            "logprob_max_abs_diff": float((got.logprobs.float() - want.logprobs.float()).abs().max())}


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300, help="KD stream rows")
    p.add_argument("--codes", type=int, default=64, help="image codes per row")
    p.add_argument("--k", type=int, default=MethodConfig().kd_top_k, help="teacher ids kept per position")
    p.add_argument("--temperature", type=float, default=MethodConfig().kd_temperature)
    p.add_argument("--batch", type=int, default=8, help="KD rows per step")
    p.add_argument("--iters", type=int, default=10, help="timed KD steps per mode")
    p.add_argument("--actors", default="1,2", help="actor counts of the Ray Data build")
    p.add_argument("--rows-per-shard", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    p.add_argument("--skip-ray", action="store_true", help="no Ray Data build (in-process cache only)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = kd_stream(args.rows, args.codes)
    positions, width = sum(len(r) for r in rows), max(len(r) for r in rows)
    with tempfile.TemporaryDirectory(prefix="tm", dir="/tmp") as workdir:  # short: Ray's socket paths
        base = build_tiny_model(SPEC, TinyModelConfig(), seed=0)
        base.save_pretrained(os.path.join(workdir, "store", "models", "base"))  # the teacher: no adapters
        base_parameters = count_parameters(base)
        model = student(base)
        adapter_parameters = count_parameters(model, trainable_only=True)

        def build() -> Any:
            return compute_teacher_cache(model, rows, pad_id=SPEC.pad_id, k=args.k, temperature=args.temperature)

        compute_teacher_cache(model, rows[:2], pad_id=SPEC.pad_id, k=args.k, temperature=args.temperature)  # warm-up
        direct_s = median_ms(build, iters=3, warmup=0) / 1e3
        cache = build()
        direct_bytes = len(cache.to_bytes())

        ray_figures: dict[str, Any] = {}
        if not args.skip_ray:
            ray_figures, sharded = ray_builds(rows, args.k, args.temperature, [int(a) for a in args.actors.split(",")],
                                              args.rows_per_shard, workdir)
            ray_figures.update(agreement(sharded.targets(list(range(len(rows))), width),
                                         cache.targets(list(range(len(rows))), width)))

    batches = [list(range(s, min(s + args.batch, len(rows)))) for s in range(0, len(rows), args.batch)]
    teachers = {"cached": CachedTeacher(cache), "online": OnlineTeacher(args.k)}
    step_ms = interleaved_ms({name: (lambda t=t: kd_step(model, t, rows, batches[0], args.temperature))
                              for name, t in teachers.items()}, args.iters)
    ids, mask = padded([rows[r] for r in batches[0]])
    targets_ms = interleaved_ms({name: (lambda t=t: t.batch_targets(batches[0], ids, mask, model))
                                 for name, t in teachers.items()}, args.iters)
    rel = []
    for b in batches:
        cached = kd_step(model, teachers["cached"], rows, b, args.temperature)
        online = kd_step(model, teachers["online"], rows, b, args.temperature)
        rel.append(abs(cached - online) / abs(online))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    result = {
        "base_parameters": base_parameters, "adapter_parameters": adapter_parameters, "vocab": SPEC.vocab_size, "rows": len(rows),
        "positions": positions, "k": args.k, "temperature": args.temperature, "batch": args.batch,
        "cache_direct_s": round(direct_s, 3), "cache_bytes": direct_bytes,
        "cache_bytes_per_position": round(direct_bytes / positions, 1),
        "cache_ray": ray_figures,
        "kd_step_cached_ms": round(step_ms["cached"], 2), "kd_step_online_ms": round(step_ms["online"], 2),
        "online_over_cached": round(step_ms["online"] / step_ms["cached"], 3),
        "targets_cached_ms": round(targets_ms["cached"], 2), "targets_online_ms": round(targets_ms["online"], 2),
        "kd_loss_rel_diff_max": float(f"{max(rel):.3g}"), "kd_loss_rel_diff_mean": float(f"{statistics.mean(rel):.3g}"),
        "machine": machine,
    }
    print(f"Teacher modes: {base_parameters:,}-parameter Chameleon + {adapter_parameters:,} MoDE, {len(rows)} KD rows "
          f"({positions:,} positions), top-{args.k}, T={args.temperature:g}, batch {args.batch}, {machine}")
    print(f"{'what':<44}{'value':>16}")
    table = [("cache build in process, median of 3 (s)", f"{direct_s:.2f}"),
             *[(f"cache build, Ray Data, {k.split('_')[1]} actor(s) (s)", f"{v['build_s']:.2f}")
               for k, v in ray_figures.items() if k.startswith("actors_")],
             ("Ray start (s)", str(ray_figures.get("ray_start_s", "-"))),
             ("cache size (MiB)", f"{direct_bytes / 2**20:.2f}"),
             ("cache bytes per position", f"{direct_bytes / positions:.0f}"),
             ("KD step, cached teacher (ms)", f"{step_ms['cached']:.1f}"),
             ("KD step, online teacher (ms)", f"{step_ms['online']:.1f}"),
             ("of which the targets, cached (ms)", f"{targets_ms['cached']:.1f}"),
             ("of which the targets, online (ms)", f"{targets_ms['online']:.1f}"),
             ("KD loss |cached - online| / online, max", f"{max(rel):.2e}"),
             ("KD loss |cached - online| / online, mean", f"{statistics.mean(rel):.2e}")]
    for what, value in table:
        print(f"{what:<44}{value:>16}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
