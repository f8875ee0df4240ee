"""Benchmark GradSimCore scoring for one checkpoint (not a test; prints a table, writes Parquet).

(a) CIFAR-10 shape (10 classes × 5,000, C=10, D=512): scikit-learn radius neighbours with the
    cosine metric on explicit gradient vectors (the paper's implementation, Sec. 4.2) against
    our FAISS and Gram backends at the same Φ. Agreement: every count must lie between the
    float64 counts at Φ + 1e-6 and Φ − 1e-6 (with 12.5M pairs per class, dozens of pairs lie
    that close to Φ, so backends legitimately differ by one on a few samples).
(b) ImageNet shape (1,000 classes × 1,300, C=1,000, D=512): the path GradSimCore takes per
    class (exact 0.9-quantile Φ and counts from one Gram pass), run in a fresh subprocess so
    its peak RSS is measured (the process tree's, by the rule in harness.py). Each class's
    factors are generated on the fly as float16 (as stored in the gradient table), so memory
    is that of scoring, not of holding the table.

Synthetic but realistic factors: h = relu(N(μ_c, 1)) (non-negative pooled features with a
class component), err = softmax(logits) − onehot(c) with logits favouring c.
``--classes`` runs a subset and extrapolates linearly to the full class count;
``--n-per-class`` and ``--dim`` shrink the shape (for a smoke run; the figures in NOTES.md
are at the default shapes).

    python benchmarks/gradsim.py --part all
    python benchmarks/gradsim.py --part imagenet --classes 50 --device cuda

Writes gradsim_<part>.parquet.
"""
from __future__ import annotations

import sys

import harness
import numpy as np
import pandas as pd
import torch

from coreset.cli import fail
from coreset.similarity import choose_backend, count_similar, quantile_threshold
from coreset.similarity.factors import as_tensor
from coreset.similarity.threshold import count_at_quantile

QUANTILE = 0.9
TIE = 1e-6
CIFAR = {"classes": 10, "n": 5000}  # full class count and samples per class of each part
IMAGENET = {"classes": 1000, "n": 1300}


def class_factors(c: int, n: int, n_classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(err, emb) of one class as float16, seeded by (seed, c)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + c)
    emb = torch.relu(torch.randn(n, dim, generator=g) + 0.5 * torch.randn(1, dim, generator=g))
    logits = 2.0 * torch.randn(n, n_classes, generator=g)
    logits[:, c % n_classes] += 3.0
    err = torch.softmax(logits, 1)
    err[:, c % n_classes] -= 1.0
    return err.half(), emb.half()


def sklearn_counts(err: torch.Tensor, emb: torch.Tensor, phi: float) -> np.ndarray:
    """The paper's route: radius neighbours, cosine distance ≤ 1 − Φ, explicit vectors."""
    from sklearn.neighbors import NearestNeighbors

    e, h = as_tensor(err, torch.float32), as_tensor(emb, torch.float32)
    g = (e[:, :, None] * torch.cat([h, torch.ones(len(h), 1)], 1)[:, None, :]).reshape(len(e), -1).numpy()
    nn = NearestNeighbors(radius=1.0 - phi, metric="cosine", algorithm="brute", n_jobs=2).fit(g)
    hits = nn.radius_neighbors(g, return_distance=False)
    return np.array([len(h) for h in hits], dtype=np.int64) - 1  # minus self


def bench_cifar(classes: int, n: int, dim: int, seed: int) -> pd.DataFrame:
    import sklearn.neighbors  # noqa: F401  imported here, before the clock starts, not in the first timed call

    n_classes = CIFAR["classes"]
    times = {"sklearn": 0.0, "faiss": 0.0, "gram": 0.0}
    mismatched = {"faiss": 0, "gram": 0}
    outside = dict.fromkeys(times, 0)  # samples whose count is off by more than pairs within TIE of Φ
    for c in range(classes):
        err, emb = class_factors(c, n, n_classes, dim, seed)
        phi = quantile_threshold(err, emb, QUANTILE)
        counts = {}
        for name in times:
            counts[name], seconds = harness.timed(
                lambda name=name, err=err, emb=emb, phi=phi:
                sklearn_counts(err, emb, phi) if name == "sklearn" else count_similar(err, emb, phi, name))
            times[name] += seconds
        lo = count_similar(err, emb, phi + TIE, "gram", dtype=torch.float64)
        hi = count_similar(err, emb, phi - TIE, "gram", dtype=torch.float64)
        for name in times:
            outside[name] += int(((counts[name] < lo) | (counts[name] > hi)).sum())
        for name in mismatched:
            mismatched[name] += int((counts[name] != counts["sklearn"]).sum())
        print(f"  cifar class {c}: Φ={phi:.4f} " + " ".join(f"{k}={v:.1f}s" for k, v in times.items()), flush=True)
    scale = n_classes / classes
    return pd.DataFrame(
        [
            {
                "part": "cifar10", "backend": name, "device": "cpu", "classes_run": classes, "n_per_class": n,
                "C": n_classes, "D": dim, "seconds": t, "seconds_full": t * scale,
                "speedup_vs_sklearn": times["sklearn"] / t, "samples_differing_from_sklearn": mismatched.get(name, 0),
                "samples_outside_tie_bounds": outside[name],
            }
            for name, t in times.items()
        ]
    )


def imagenet_worker(classes: int, n: int, dim: int, seed: int, device: str) -> None:
    """Subprocess body of the ImageNet part: score ``classes`` classes, reply with the seconds."""
    n_classes = IMAGENET["classes"]
    scoring, generating = 0.0, 0.0
    options = choose_backend(n, n_classes, dim)[1] if device == "auto" else {"device": device}
    sync = harness.cuda_sync(str(options["device"]))
    for c in range(classes):
        (err, emb), seconds = harness.timed(lambda c=c: class_factors(c, n, n_classes, dim, seed))
        generating += seconds
        scoring += harness.timed(lambda err=err, emb=emb: count_at_quantile(err, emb, QUANTILE, **options), sync)[1]
    harness.reply({"seconds": scoring, "generate_seconds": generating, "device": str(options["device"])})


def bench_imagenet(classes: int, n: int, dim: int, seed: int, device: str, threads: int) -> pd.DataFrame:
    cmd = [sys.executable, __file__, "--part", "imagenet-worker", "--classes", str(classes), "--n-per-class", str(n),
           "--dim", str(dim), "--seed", str(seed), "--device", device, "--threads", str(threads)]
    probe = harness.run_probe(cmd)
    result = probe.payload
    scale = IMAGENET["classes"] / classes
    return pd.DataFrame(
        [
            {
                "part": "imagenet", "backend": "gram (quantile Φ fused)", "device": result["device"],
                "classes_run": classes,
                "n_per_class": n, "C": IMAGENET["classes"], "D": dim, "seconds": result["seconds"],
                "seconds_full": result["seconds"] * scale, "generate_seconds": result["generate_seconds"],
                "subprocess_wall_seconds": probe.wall_s, "peak_rss_mb": probe.peak_mib,
            }
        ]
    )


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--part", choices=["cifar", "imagenet", "all", "imagenet-worker"], default="all",
                        help="which shape to run (imagenet-worker is the ImageNet part's subprocess)")
    parser.add_argument("--classes", type=harness.positive, default=None,
                        help="run this many classes of each part and extrapolate (default: all)")
    parser.add_argument("--n-per-class", type=harness.positive, default=None,
                        help=f"samples per class (default {CIFAR['n']} CIFAR, {IMAGENET['n']} ImageNet)")
    parser.add_argument("--dim", type=harness.positive, default=512, help="embedding width D")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="device of the ImageNet part")
    parser.add_argument("--threads", type=harness.positive, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    if args.part == "imagenet-worker":
        return imagenet_worker(args.classes, args.n_per_class, args.dim, args.seed, args.device)
    frames = []
    if args.part in ("cifar", "all"):
        frames.append(bench_cifar(min(args.classes or CIFAR["classes"], CIFAR["classes"]),
                                  args.n_per_class or CIFAR["n"], args.dim, args.seed))
    if args.part in ("imagenet", "all"):
        frames.append(bench_imagenet(min(args.classes or IMAGENET["classes"], IMAGENET["classes"]),
                                     args.n_per_class or IMAGENET["n"], args.dim, args.seed, args.device, args.threads))
    table = pd.concat(frames, ignore_index=True)
    harness.write_result(table, f"gradsim_{args.part}", args.out, float_format=lambda x: f"{x:.3g}")


if __name__ == "__main__":
    main()
