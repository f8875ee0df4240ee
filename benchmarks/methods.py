"""What each selection method costs to score, per class and for a whole dataset, on one core,
at CIFAR-10's shape (50,000 images, 10 classes) and ImageNet-1K's (1.28M images, 1,000
classes), both with 512-wide features (ResNet-18's penultimate layer).

The inputs are the score stage's own: one class of the typical size, its gradient rows
computed by the gradient stage's code from ``mlp512`` on synthetic images of the shape
(``coreset.calibrate.score_rates``, what ``--plan --calibrate`` times), handed to each method
as the stage hands them. A method that scores one class at a time is timed on that class and
projected to all classes; one that scores the whole table is timed on the class's rows and
projected linearly to every row. The model is untrained, so the numbers say what scoring
costs, not what it selects; greedy methods whose cost depends on the data (lazy greedy) may
run faster or slower on a trained model's rows.

    python benchmarks/methods.py [--shapes cifar imagenet] [--methods m1 m2 ...]

Writes methods.parquet (``shape, method, by_class, rows_per_class, classes, seconds_per_class,
seconds_per_row, projected_s``: the whole dataset on one core).
"""
from __future__ import annotations

import sys

import harness
import pandas as pd
import torch

SHAPES = {"cifar": (50_000, 10), "imagenet": (1_281_000, 1_000)}
# Methods whose inputs need more than a gradient table: forgetting reads source training's
# per-epoch correctness, which a calibration has no source run for.
NEEDS_SOURCE_RUN = {"forgetting"}


def shape_config(images: int, classes: int, methods: list[str]) -> object:
    from coreset.config import load_config

    return load_config("jobs/configs/imagenet_shape.yaml", [
        f"data.synthetic_size={images}", f"data.synthetic_classes={classes}",
        f"score.methods=[{', '.join(methods)}]"])


def measure(shape: str, methods: list[str]) -> pd.DataFrame:
    from coreset.calibrate import score_rates
    from coreset.data import load_datasets, train_val_split

    images, classes = SHAPES[shape]
    cfg = shape_config(images, classes, methods)
    datasets = load_datasets(cfg.data)
    split = train_val_split(datasets.train.labels.numpy(), cfg.data.val_fraction, cfg.seed)
    rows_per_class = int((split.split == "train").sum() // classes)
    rates = score_rates(cfg, datasets, split, {"CPU": 1.0}, cfg.train.epochs)
    out = []
    for name in methods:
        r = rates[f"score.{name}"]
        by_class = r.per == "class"
        per_class = r.seconds if by_class else r.seconds * rows_per_class
        out.append({"shape": shape, "method": name, "by_class": by_class, "rows_per_class": rows_per_class,
                    "classes": classes, "seconds_per_class": per_class,
                    "seconds_per_row": per_class / rows_per_class, "projected_s": per_class * classes})
    return pd.DataFrame(out)


def main() -> None:
    from coreset.methods import METHODS

    p = harness.parser(__doc__)
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["cifar", "imagenet"])
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method but forgetting")
    args = p.parse_args()
    methods = args.methods or [m for m in METHODS.names() if m not in NEEDS_SOURCE_RUN]
    unknown = [m for m in methods if m not in METHODS.names()]
    if unknown:
        from coreset.cli import fail

        fail(f"unknown method {unknown[0]}; registered: {', '.join(METHODS.names())}")
    torch.set_num_threads(1)
    table = pd.concat([measure(shape, methods) for shape in args.shapes], ignore_index=True)
    harness.write_result(table, "methods", args.out,
                         title="Scoring one class and the whole dataset on one core, by method and shape")


if __name__ == "__main__":
    sys.exit(main())
