"""The score stage on Ray: GradSimCore's class-wise similarity counts spread over Ray
tasks (one class each, a GPU each when the cluster has them); the magnitude methods
and Random score in the driver from the final checkpoint's norm column. Each method's
scores and subsets are one atomic file; a re-run skips methods already written with the same settings
(``scores/_manifest.json``) and re-scores those whose settings changed.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import ray

from coreset import layout
from coreset.cluster.runtime import gpus_available
from coreset.config import StudyConfig, config_from_dict
from coreset.progress import Progress
from coreset.stages.score import (build_method, entropy_frame, gradient_manifest, method_settings, read_gradients,
                             subsets_frame, with_method)
from coreset.storage import StudyRoot
from coreset.tables import read_table, write_table

log = logging.getLogger("coreset")


@dataclass
class ScoreSummary:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    subset_sizes: dict[str, dict[float, int]] = field(default_factory=dict)
    wall_s: float = 0.0


def _gradsim_class(study: dict, root_uri: str, label: int, final_epoch: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GradSimCore counts of one class (summed over the factor epochs) and the Φ used."""
    cfg = config_from_dict(study)
    root = StudyRoot(root_uri)
    method = build_method(cfg, "gradsimcore", final_epoch)
    rows = read_gradients(root, ["sample_id", "label", "epoch", "err", "emb"], list(cfg.gradients.factor_epochs), label)
    return method.score(rows), method.thresholds_


def run_score(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float]) -> ScoreSummary:
    start = time.perf_counter()
    manifest = gradient_manifest(root)
    final = int(manifest["final_epoch"])
    summary = ScoreSummary()
    entropy = []
    done = json.loads(root.read_bytes(layout.SCORES_MANIFEST)) if root.exists(layout.SCORES_MANIFEST) else {}
    for name in cfg.score.methods:
        method = build_method(cfg, name, final)
        settings = method_settings(cfg, name, final)
        if done.get(name) == settings and root.exists(layout.scores(name)) and root.exists(layout.subsets(name)):
            summary.skipped.append(name)
            scores = read_table(root, layout.scores(name), "scores")
        else:
            if name == "gradsimcore":
                scores = _score_gradsimcore(cfg, root, resources, final)
            else:
                cols = ["sample_id", "label", "epoch"] + ([cfg.score.norm] if name != "random" else [])
                scores = method.score(read_gradients(root, cols, [final]))
            subsets = subsets_frame(method, scores, cfg)
            write_table(root, layout.scores(name), with_method(scores, name), "scores")
            write_table(root, layout.subsets(name), subsets, "subsets")
            done[name] = settings
            root.write_bytes(layout.SCORES_MANIFEST, json.dumps(done, indent=2).encode())
            summary.computed.append(name)
            log.info("score: %s done (%d samples)", name, len(scores))
        ranking = {"max_gradient": cfg.score.norm, "gradsimcore": "gradsimcore"}.get(name)
        if ranking:  # the magnitude methods share one ranking (by the norm column)
            entropy.append(entropy_frame(ranking, scores, cfg.score.fractions))
    if entropy and (summary.computed or not root.exists(f"{layout.ANALYSIS}/label_entropy.parquet")):
        write_table(root, f"{layout.ANALYSIS}/label_entropy.parquet", pd.concat(entropy, ignore_index=True), "label_entropy")
    subsets = pd.read_parquet(root.url(layout.SUBSETS))
    summary.subset_sizes = {m: g.groupby("fraction").size().div(len(cfg.score.seeds)).astype(int).to_dict()
                            for m, g in subsets.groupby("method")}
    summary.wall_s = time.perf_counter() - start
    return summary


def _score_gradsimcore(cfg: StudyConfig, root: StudyRoot, resources: dict[str, float], final: int) -> pd.DataFrame:
    labels = np.unique(read_gradients(root, ["label"], [final])["label"].to_numpy())
    options = {"num_gpus": 1} if gpus_available(resources) else {"num_cpus": 1}
    task = ray.remote(max_retries=3)(_gradsim_class).options(**options)
    pending = [task.remote(cfg.to_dict(), root.uri, int(c), final) for c in labels]
    progress = Progress("gradsimcore classes", len(pending), every_s=10)
    scores, thresholds = [], []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        s, t = ray.get(done[0])
        scores.append(s)
        thresholds.append(t)
        progress.step()
    write_table(root, f"{layout.ANALYSIS}/gradsim_thresholds.parquet",
                pd.concat(thresholds, ignore_index=True).sort_values(["epoch", "label"]), "gradsim_thresholds")
    return pd.concat(scores, ignore_index=True).sort_values("sample_id").reset_index(drop=True)
