"""Throughput and peak memory of the per-sample gradient engine against its baselines.

For each model at CIFAR size, side by side in one run:
  (a) forward       forward only (no_grad, eval)
  (b) train_step    forward + backward + SGD step (train mode)
  (c) last_table    engine, groups=("last",), factors on (forward only)
  (d) engine_l2     engine, l2 over last/weights/biases/all (one forward + one backward)
  (e) vmap_grad     torch.func vmap(grad) per-sample gradients + l2 norms (eval)
  (f) loop          batch-of-one autograd loop + l2 norms (eval)
Peak memory of (b) and (d): on CUDA ``max_memory_allocated`` above the model and data; on
CPU each is run in a fresh subprocess and its peak RSS (VmHWM) is reported minus that of
a subprocess that only built the model and the data.

    python jobs/bench_gradients.py [--models resnet18_cifar vgg16_bn] [--image-size 32]
        [--batch 64] [--device cpu|cuda] [--out results/bench/gradients.parquet] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coreset.gradients import GradientSpec, PerSampleGradients  # noqa: E402
from coreset.models import InputSpec, build_model  # noqa: E402

NUM_CLASSES = 10


def setup(name: str, image_size: int, batch: int, device: str, seed: int = 0):
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

    def vmap_grad(xs=x, ys=y):
        model.eval()
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(p, xi, yi):
            return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
        return sum(g.flatten(1).pow(2).sum(1) for g in grads.values()).sqrt()

    def loop(xs=x, ys=y):
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


def timed(fns: dict[str, Callable[[], object]], warmups: dict[str, Callable[[], object]], repeats: dict[str, int],
          device: str) -> dict[str, float]:
    """Best seconds per call of each piece after its warm-up, repeats interleaved round-robin.

    Interleaving and taking the minimum keep the ratios fair on a shared, noisy machine.
    """
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    best = {k: math.inf for k in fns}
    for fn in warmups.values():
        fn()
    sync()
    for r in range(max(repeats.values())):
        for k, fn in fns.items():
            if r < repeats[k]:
                t0 = time.perf_counter()
                fn()
                sync()
                best[k] = min(best[k], time.perf_counter() - t0)
    return best


def probe(name: str, image_size: int, batch: int, piece: str) -> None:
    """Subprocess body: build, optionally run ``piece`` twice, print peak RSS in MiB."""
    model, x, y = setup(name, image_size, batch, "cpu")
    if piece != "baseline":
        fn = pieces(model, x, y)[piece]
        fn()
        fn()
    print(json.dumps({"peak_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ``ru_maxrss``: Linux carries the maxrss of a
    forked parent across ``exec`` into the child, VmHWM belongs to the new address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_peak_mib(name: str, image_size: int, batch: int, piece: str) -> float:
    cmd = [sys.executable, __file__, "--probe", name, piece, "--image-size", str(image_size), "--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def cuda_peak_mib(fn: Callable[[], object]) -> float:
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    model, x, y = setup(name, args.image_size, args.batch, args.device)
    fns = pieces(model, x, y)
    # the per-sample baselines are far slower: a smaller batch and fewer repeats on CPU
    small = args.batch if args.device == "cuda" else min(args.batch, args.small_batch)
    xs, ys = x[:small], y[:small]
    slow = ("vmap_grad", "loop")
    warmups = {k: (lambda f=fns[k]: f(xs[:2], ys[:2])) if k in slow else fns[k] for k in fns}
    for k in slow:
        fns[k] = lambda f=fns[k]: f(xs, ys)
    reps = {k: min(2, args.repeats) if k in slow and args.device == "cpu" else args.repeats for k in fns}
    seconds = timed(fns, warmups, reps, args.device)
    rows = []
    for piece, sec in seconds.items():
        n = small if piece in slow else args.batch
        mem = float("nan")
        if piece in ("train_step", "engine_l2"):
            if args.device == "cuda":
                mem = cuda_peak_mib(fns[piece])
            else:
                mem = cpu_peak_mib(name, args.image_size, args.batch, piece) - args.baseline[name]
        rows.append(dict(model=name, device=args.device, image_size=args.image_size, piece=piece, batch=n,
                         s_per_batch=sec, samples_per_s=n / sec, peak_mem_mib=mem))
        print(f"  {name:16s} {piece:11s} batch {n:3d}  {n / sec:9.1f} samples/s  mem {mem:8.1f} MiB", flush=True)
    return rows


def ratios(table: pd.DataFrame) -> pd.DataFrame:
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18_cifar", "vgg16_bn"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--small-batch", type=int, default=8, help="batch of the vmap/loop baselines on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=Path("results/bench/gradients.parquet"))
    p.add_argument("--repeats", type=int, default=3, help="timed calls per piece (min is kept)")
    p.add_argument("--probe", nargs=2, metavar=("MODEL", "PIECE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        return probe(args.probe[0], args.image_size, args.batch, args.probe[1])
    if args.device == "cpu":
        args.baseline = {m: cpu_peak_mib(m, args.image_size, args.batch, "baseline") for m in args.models}
    print(f"device {args.device}, batch {args.batch}, {args.image_size} px, torch threads {torch.get_num_threads()}")
    table = pd.DataFrame([row for name in args.models for row in bench_model(name, args)])
    summary = ratios(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out, index=False)
    summary.to_parquet(args.out.with_name(args.out.stem + "_ratios.parquet"), index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(table.to_string(index=False))
        print("\nratios (targets: last/forward >= 0.9, l2/train time <= 2.5, vmap/l2 speedup >= 10, l2/train mem <= 2)")
        print(summary.to_string(index=False))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
