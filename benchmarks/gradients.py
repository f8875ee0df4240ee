"""Throughput and peak memory of the per-sample gradient engine against its baselines.

For each model, side by side in one run:
  (a) forward       forward only (no_grad, eval)
  (b) train_step    forward + backward + SGD step (train mode)
  (c) last_table    engine, groups=("last",), factors on (forward only)
  (d) engine_l2     engine, l2 over last/weights/biases/all (one forward + one backward)
  (e) vmap_grad     torch.func vmap(grad) per-sample gradients + l2 norms (eval)
  (f) loop          batch-of-one autograd loop + l2 norms (eval)
Throughput is the best of --repeats calls after a warm-up. Peak memory of (b) and (d), by
the rule in harness.py: on CUDA max_memory_allocated above the model and data; on CPU each
runs in a fresh subprocess and its process tree's peak RSS is reported minus that of a
subprocess that only built the model and the data.

    python benchmarks/gradients.py [--models resnet18_cifar vgg16_bn] [--image-size 32]
        [--batch 64] [--device cpu|cuda] [--repeats N] [--out results/bench]

Writes gradients.parquet (one row per model and piece) and gradients_ratios.parquet.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import harness
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from coreset.cli import fail
from coreset.gradients import GradientSpec, PerSampleGradients
from coreset.models import MODELS, InputSpec, build_model

NUM_CLASSES = 10
SLOW = ("vmap_grad", "loop")  # the per-sample baselines: a smaller batch and fewer repeats on CPU
MEASURED = ("train_step", "engine_l2")  # the pieces whose peak memory is reported


def setup(name: str, image_size: int, batch: int, device: str,
          seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model and one random batch, the same in every process for the same arguments."""
    torch.manual_seed(seed)
    model = build_model(name, InputSpec(3, image_size, NUM_CLASSES)).to(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return model, x, y


def pieces(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The measured computations, each a closure over one batch."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    last = PerSampleGradients(model, GradientSpec(groups=("last",)))
    l2 = PerSampleGradients(model, GradientSpec())

    def forward():
        model.eval()
        with torch.no_grad():
            return model(x)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def vmap_grad(xs: torch.Tensor = x, ys: torch.Tensor = y) -> torch.Tensor:
        model.eval()
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
        return sum(g.flatten(1).pow(2).sum(1) for g in grads.values()).sqrt()

    def loop(xs: torch.Tensor = x, ys: torch.Tensor = y) -> torch.Tensor:
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        out = []
        for i in range(len(xs)):
            gs = torch.autograd.grad(F.cross_entropy(model(xs[i:i + 1]), ys[i:i + 1]), params)
            out.append(torch.sqrt(sum(g.pow(2).sum() for g in gs)))
        return torch.stack(out)

    return {
        "forward": forward,
        "train_step": train_step,
        "last_table": lambda: last.compute(x, y),
        "engine_l2": lambda: l2.compute(x, y),
        "vmap_grad": vmap_grad,
        "loop": loop,
    }


def probe(name: str, image_size: int, batch: int, piece: str) -> None:
    """Subprocess body: build, run ``piece`` twice (as the timed runs do) unless it is the
    ``baseline``, and reply to :func:`harness.run_probe`."""
    model, x, y = setup(name, image_size, batch, "cpu")
    if piece != "baseline":
        fn = pieces(model, x, y)[piece]
        fn()
        fn()
    harness.reply({})


def cpu_peak_mib(name: str, image_size: int, batch: int, piece: str) -> float:
    argv = [sys.executable, __file__, "--probe", name, piece, "--image-size", str(image_size), "--batch", str(batch)]
    return harness.run_probe(argv).peak_mib


def bench_model(name: str, args: argparse.Namespace, baseline_mib: float) -> list[dict]:
    model, x, y = setup(name, args.image_size, args.batch, args.device)
    fns = pieces(model, x, y)
    small = args.batch if args.device == "cuda" else min(args.batch, args.small_batch)
    xs, ys = x[:small], y[:small]
    warmups = {k: (lambda f=fns[k]: f(xs[:2], ys[:2])) for k in SLOW}
    for k in SLOW:
        fns[k] = lambda f=fns[k]: f(xs, ys)
    reps = {k: min(2, args.repeats) if k in SLOW and args.device == "cpu" else args.repeats for k in fns}
    timings = harness.time_pieces(fns, reps, warmups, harness.cuda_sync(args.device))
    rows = []
    for piece, timing in timings.items():
        n = small if piece in SLOW else args.batch
        sec = timing.min_s
        mem = float("nan")
        if piece in MEASURED:
            if args.device == "cuda":
                mem = harness.cuda_peak_mib(fns[piece])
            else:
                mem = cpu_peak_mib(name, args.image_size, args.batch, piece) - baseline_mib
        rows.append(dict(model=name, device=args.device, image_size=args.image_size, piece=piece, batch=n,
                         s_per_batch=sec, samples_per_s=n / sec, peak_mem_mib=mem))
        print(f"  {name:16s} {piece:11s} batch {n:3d}  {n / sec:9.1f} samples/s  mem {mem:8.1f} MiB", flush=True)
    return rows


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each model's engine against its baselines, the figures the targets are stated in."""
    t = table.set_index(["model", "piece"])
    out = []
    for name in table["model"].unique():
        thr = t.loc[name, "samples_per_s"]
        mem = t.loc[name, "peak_mem_mib"]
        out.append(dict(
            model=name,
            last_vs_forward_thr=thr["last_table"] / thr["forward"],          # target >= 0.9
            l2_vs_train_time=thr["train_step"] / thr["engine_l2"],           # target <= 2.5
            l2_vs_vmap_speedup=thr["engine_l2"] / thr["vmap_grad"],          # target >= 10
            l2_vs_loop_speedup=thr["engine_l2"] / thr["loop"],
            l2_vs_train_mem=mem["engine_l2"] / mem["train_step"],            # target <= 2
        ))
    return pd.DataFrame(out)


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["resnet18_cifar", "vgg16_bn"], metavar="MODEL",
                   help=f"registered model names ({', '.join(MODELS.names())})")
    p.add_argument("--image-size", type=harness.positive, default=32, help="input side in pixels (3 channels)")
    p.add_argument("--batch", type=harness.positive, default=64, help="batch of all but the per-sample baselines")
    p.add_argument("--small-batch", type=harness.positive, default=8, help="batch of the vmap/loop baselines on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=harness.positive, default=3,
                   help="timed calls per piece after a warm-up (the fastest is kept)")
    p.add_argument("--probe", nargs=2, metavar=("MODEL", "PIECE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        return probe(args.probe[0], args.image_size, args.batch, args.probe[1])
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        fail(f"unknown model {', '.join(unknown)}; allowed: {', '.join(MODELS.names())}")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but torch sees no CUDA device")
    baseline = {m: cpu_peak_mib(m, args.image_size, args.batch, "baseline") if args.device == "cpu" else 0.0
                for m in args.models}
    print(f"device {args.device}, batch {args.batch}, {args.image_size} px, torch threads {torch.get_num_threads()}")
    table = pd.DataFrame([row for name in args.models for row in bench_model(name, args, baseline[name])])
    harness.write_result(table, "gradients", args.out)
    harness.write_result(ratios(table), "gradients_ratios", args.out,
                         title="ratios (targets: last/forward >= 0.9, l2/train time <= 2.5, "
                               "vmap/l2 speedup >= 10, l2/train mem <= 2)")


if __name__ == "__main__":
    main()
