"""The GradSimCore paper's published accuracies (its Tables 2-6) beside a study's own.

``coreset/data/published.csv`` holds the numbers as printed (accuracy and std in %, ``std``
empty where the paper gives none; ``selected_by`` is the DeepCore algorithm the paper names
as best, empty where it names none), one row per cell, each citing its table. A study's rows
are set beside them only where dataset, source and target model and fraction all match, so
a number is never compared with a different experiment.
"""
from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd

# Our model names -> the paper's. The CIFAR forms (3x3 stem, BN VGG) are the DeepCore
# networks the paper trains on 32 px images; the torchvision forms are its ImageNet ones.
PAPER_MODELS = {"resnet18_cifar": "ResNet18", "resnet18": "ResNet18", "vgg16_bn": "VGG16", "vgg16": "VGG16",
                "inception_v3": "Inception-V3"}
PAPER_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
IMAGENET_CLASSES = 1000


def published() -> pd.DataFrame:
    """The packaged table of published numbers."""
    with files("coreset.data").joinpath("published.csv").open("rb") as f:
        return pd.read_csv(f, dtype={"selected_by": str}, keep_default_na=False, na_values={"std": [""]})


def paper_dataset(data_name: str, num_classes: int) -> str | None:
    """The paper's name of our dataset: CIFAR by name; an image folder of 1000 classes is taken
    for ImageNet-1K (the only folder dataset the paper reports)."""
    if data_name == "imagefolder" and num_classes == IMAGENET_CLASSES:
        return "ImageNet-1K"
    return PAPER_DATASETS.get(data_name)


def compare(summary: pd.DataFrame, data_name: str, num_classes: int, source_model: str) -> tuple[pd.DataFrame, str]:
    """Published rows beside ours, and one sentence saying what matched (or why nothing did).

    ``summary`` is :func:`coreset.figures.accuracy.summarise` of the study's accuracy table
    (fractions, mean and std as shares). The result has one row per published experiment
    (table, source, target, fraction) with the paper's GradSimCore and best DeepCore
    accuracy, and ours: gradsimcore, random and our best method at that fraction (in %).
    """
    table = published()
    dataset = paper_dataset(data_name, num_classes)
    rows = table[table["dataset"] == dataset] if dataset else table.iloc[:0]
    if rows.empty:
        return pd.DataFrame(), (f"The GradSimCore paper reports no {data_name} results "
                                f"(its Tables 2-6 cover {', '.join(table['dataset'].unique())}).")
    source = PAPER_MODELS.get(source_model)
    targets = {t: PAPER_MODELS.get(t) for t in sorted(summary["target_model"].unique())}
    wanted = {(source, p) for p in targets.values() if p and source}
    rows = rows[[(s, t) in wanted for s, t in zip(rows["source_model"], rows["target_model"], strict=True)]]
    if rows.empty:
        theirs = sorted({f"{s} → {t}" for s, t in zip(table["source_model"], table["target_model"], strict=True)})
        ours = ", ".join(f"{source_model} → {t}" for t in targets)
        return pd.DataFrame(), (f"No published {dataset} model pair matches ours ({ours}); "
                                f"the paper's pairs are {', '.join(theirs)}.")
    out = []
    for (tab, src, tgt, fraction), cell in rows.groupby(["table", "source_model", "target_model", "fraction"]):
        ours = summary[np.isclose(summary["fraction"], fraction)
                       & summary["target_model"].map(lambda t, tgt=tgt: targets.get(t) == tgt)]
        if ours.empty:
            continue
        by_method = cell.set_index("method")
        row = {"table": tab, "source": src, "target": tgt, "fraction": fraction,
               "GradSimCore (paper)": _cell(by_method, "GradSimCore"),
               "DeepCore best (paper)": _cell(by_method, "DeepCore"),
               "gradsimcore (ours)": _ours(ours, "gradsimcore"), "random (ours)": _ours(ours, "random")}
        best = ours[ours["method"] != "full"].sort_values("mean", ascending=False).head(1)
        row["best of ours"] = (f"{100 * best['mean'].iloc[0]:.2f} ± {100 * best['std'].iloc[0]:.2f} "
                               f"({best['method'].iloc[0]})") if len(best) else ""
        out.append(row)
    if not out:
        return pd.DataFrame(), (f"The paper's {dataset} rows match our models but none of our fractions "
                                f"({', '.join(f'{f:g}' for f in sorted(summary['fraction'].unique()))}).")
    return pd.DataFrame(out), f"Our {dataset} results beside the GradSimCore paper's where dataset, models and " \
                              "fraction match (accuracy in %, mean ± std over seeds)."


def _cell(by_method: pd.DataFrame, method: str) -> str:
    if method not in by_method.index:
        return ""
    row = by_method.loc[method]
    text = f"{row['accuracy']:.2f}" + ("" if pd.isna(row["std"]) else f" ± {row['std']:.2f}")
    return text + (f" ({row['selected_by']})" if row["selected_by"] else "")


def _ours(ours: pd.DataFrame, method: str) -> str:
    rows = ours[ours["method"] == method]
    return "" if rows.empty else f"{100 * rows['mean'].iloc[0]:.2f} ± {100 * rows['std'].iloc[0]:.2f}"
