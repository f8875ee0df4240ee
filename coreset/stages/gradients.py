"""The gradient stage without Ray: which (checkpoint, shard) pieces to compute (the resume
plan, read from the study root), and each piece.

The table has one row per (sample_id, epoch) for the train split at the chosen
checkpoints: at the trained model (``final``) every configured norm plus the factors;
at GradSimCore's early checkpoints the closed-form last-layer norms and the factors
``err``/``emb`` (a forward pass only). Every shard file has the same schema (norm
columns are null where not computed) so readers can concatenate them. The stage also
writes the tables only some methods read, when one is configured
(:mod:`coreset.stages.method_tables`): the validation split's factors and DeepFool's
perturbations.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from coreset import layout
from coreset.config import GradientsConfig, StudyConfig
from coreset.data import Datasets, streamed_shards
from coreset.data.cut import class_cut
from coreset.errors import StageError
from coreset.gradients import GradientSpec, PerSampleGradients, batch_bound
from coreset.models import Classifier
from coreset.placement import Placement
from coreset.rates import Rate, rate
from coreset.stages.method_tables import compute_perturbations, manifests, method_tasks
from coreset.stages.shard_task import ShardTask
from coreset.stages.train import SourceResult, load_source_model, read_source_result
from coreset.storage import StudyRoot
from coreset.tables import read_table, to_arrow, write_table


@dataclass(frozen=True)
class GradientsPlan:
    """Every file of the gradient table (and of the tables configured methods read besides
    it), those still missing, and whether the batch-bound table is; ``manifest`` is the
    gradient table's settings, ``others`` those of the other tables by manifest path."""

    tasks: list[ShardTask]
    todo: list[ShardTask]
    train_ids: np.ndarray
    final_epoch: int
    manifest: dict[str, object]
    need_bound: bool
    others: dict[str, dict[str, object]] = field(default_factory=dict)

    def summary(self) -> str:
        epochs = sorted({t.epoch for t in self.tasks})
        return (f"{len(self.todo)} of {len(self.tasks)} shards to compute "
                f"({len(self.train_ids)} images x epochs {epochs})")


def plan(cfg: StudyConfig, root: StudyRoot) -> GradientsPlan:
    """What is left of the study's gradient table; refuses a root whose table was computed
    with other settings. Reads only the root's records and file listing."""
    source = read_source_result(root)
    if source is None:
        raise StageError(f"no finished source training in {root.url()}; run jobs/train.py first")
    split = read_table(root, layout.SPLIT, "split")
    final = final_epoch(cfg.gradients, source)
    tasks, wanted, others = table_tasks(cfg, split, final, source.epochs_run)
    check_manifest(root, layout.GRADIENTS_MANIFEST, wanted)
    for path, settings in others.items():
        check_manifest(root, path, settings)
    written = {folder: set(root.list(folder)) for folder in {t.folder for t in tasks}}  # a listing per folder
    todo = [t for t in tasks if t.path.rsplit("/", 1)[1] not in written[t.folder]]
    need_bound = cfg.gradients.bound_batches > 0 and not root.exists(layout.BATCH_BOUND)
    train_ids = np.sort(split.sample_id[split.split == "train"].to_numpy(np.int64))
    return GradientsPlan(tasks, todo, train_ids, final, wanted, need_bound, others)


def table_tasks(cfg: StudyConfig, split: pd.DataFrame, final: int, epochs_run: int
                ) -> tuple[list[ShardTask], dict[str, object], dict[str, dict[str, object]]]:
    """Every file the stage writes for ``split``, the gradient table's manifest and the other
    tables' manifests (by path): what the plan compares with the root, and ``--plan`` counts."""
    train = split[split.split == "train"].set_index("sample_id").label
    val = split[split.split == "val"].set_index("sample_id").label
    shards, kind = work_shards(cfg, train)
    labels = shard_labels(shards, train)
    tasks = shard_tasks(shards, final, cfg.gradients.factor_epochs, epochs_run)
    wanted = manifest(cfg.gradients, tasks, len(train), labels, kind)
    extra = method_tasks(cfg, final, shards, labels, val)
    return tasks + extra, wanted, manifests(cfg, extra)


def check(cfg: StudyConfig, root: StudyRoot) -> None:
    """Refuse settings that contradict the table the root already holds (before any work)."""
    if root.exists(layout.GRADIENTS_MANIFEST) and read_source_result(root) is not None:
        plan(cfg, root)


def final_epoch(cfg: GradientsConfig, source: SourceResult) -> int:
    if cfg.final_epoch == "best":
        return source.best_epoch
    if cfg.final_epoch == "last":
        return source.epochs_run
    epoch = int(cfg.final_epoch)
    if epoch > source.epochs_run:
        raise StageError(f"gradients.final_epoch={epoch} but source training ran {source.epochs_run} epochs")
    return epoch


def work_shards(cfg: StudyConfig, train: pd.Series) -> tuple[list[np.ndarray], str]:
    """The stage's shards of the train ids (``train``: label by sample id) and their layout. A
    pack that streams and was cut by class gives its own shards (``pack_shards``): each shard's
    train ids, val ids left out, so a worker reads its pack shard front to back in one request;
    they obey the rule of :func:`class_shards` (the pack was cut by it, in bytes). Every other
    dataset gets :func:`class_shards` of ``gradients.shard_size`` rows."""
    pack = streamed_shards(cfg.data)
    if pack is None:
        return class_shards(train.index.to_numpy(), train.to_numpy(), cfg.gradients.shard_size), "class_shards"
    ids = np.sort(train.index.to_numpy(np.int64))
    parts = [ids[np.searchsorted(ids, first): np.searchsorted(ids, first + count)] for first, count in pack]
    return [p for p in parts if len(p)], "pack_shards"


def class_shards(train_ids: np.ndarray, labels: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """The train ids cut into shards of whole classes: classes in label order are packed into a
    shard while they fit in ``shard_size`` rows; a larger class gets shards of its own. So the
    class-wise score stage reads each shard file once for the classes it holds, never the
    whole table per class. For a folder dataset (ImageNet), whose canonical order is sorted by
    class, every shard is one contiguous range of sample ids."""
    ids, labels = np.asarray(train_ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    order = np.lexsort((ids, labels))
    ids, labels = ids[order], labels[order]
    return [np.sort(ids[first: first + count]) for first, count in class_cut(labels, np.ones(len(ids)), shard_size)]


def shard_tasks(shards: list[np.ndarray], final: int, factor_epochs: tuple[int, ...],
                epochs_run: int) -> list[ShardTask]:
    """Every (epoch, shard) piece of the table, ordered by epoch (each worker loads a checkpoint once)."""
    bad = [e for e in factor_epochs if e > epochs_run]
    if bad:
        raise StageError(f"gradients.factor_epochs {bad} exceed the {epochs_run} epochs of source training")
    epochs = sorted(set(factor_epochs) | {final})
    return [ShardTask(e, s, part, e == final) for e in epochs for s, part in enumerate(shards)]


def shard_labels(shards: list[np.ndarray], label_of: pd.Series) -> list[list[int]]:
    """[lowest, highest] label of each shard (the manifest's map for the class-wise stage)."""
    return [[int(label_of.loc[part[0]]), int(label_of.loc[part].max())] for part in shards]


def manifest(cfg: GradientsConfig, tasks: list[ShardTask], n: int, labels: list[list[int]],
             kind: str = "class_shards") -> dict[str, object]:
    """What a finished table was computed with; a re-run with other settings is refused.
    ``shard_labels`` says which classes each shard holds (the same for every epoch); ``kind``
    is the layout (:func:`work_shards`: a pack's shards do not depend on ``shard_size``)."""
    final = next(t.epoch for t in tasks if t.final)
    size = cfg.shard_size if kind == "class_shards" else None
    return {"rows_per_epoch": n, "epochs": sorted({t.epoch for t in tasks}), "final_epoch": final,
            "shards_per_epoch": len({t.shard for t in tasks}), "shard_size": size, "layout": kind,
            "shard_labels": labels, "norms": list(cfg.norms), "groups": list(cfg.groups),
            "factor_dtype": cfg.factor_dtype}


def check_manifest(root: StudyRoot, path: str, wanted: dict[str, object]) -> None:
    """Refuse a table computed with other settings (reads only); ``path``: its manifest."""
    if root.exists(path):
        found = json.loads(root.read_bytes(path))
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise StageError(f"{root.url(path.rsplit('/', 1)[0])} was computed with other settings "
                             f"({', '.join(diff)}); delete it or use another --root")


def record_manifest(root: StudyRoot, gradients_plan: GradientsPlan) -> None:
    """Record each table's settings before its first file is written."""
    for path, settings in {layout.GRADIENTS_MANIFEST: gradients_plan.manifest, **gradients_plan.others}.items():
        if not root.exists(path):
            root.write_bytes(path, json.dumps(settings, indent=2).encode())


def gradient_spec(cfg: GradientsConfig, final: bool) -> GradientSpec:
    groups = cfg.groups if final else ("last",)
    return GradientSpec(norms=cfg.norms, groups=groups, factors=True, chunk_bytes=cfg.chunk_mb << 20, amp=cfg.amp)


def compute_task(model: Classifier, datasets: Datasets, task: ShardTask, cfg: GradientsConfig,
                 device: torch.device) -> pa.Table:
    """The file of one task as an Arrow table of its kind (``task.kind``)."""
    if task.table == "perturbations":
        return compute_perturbations(model, datasets, task, cfg.batch_size, device)
    return compute_shard(model, datasets, task, cfg, device)


def compute_shard(model: Classifier, datasets: Datasets, task: ShardTask, cfg: GradientsConfig,
                  device: torch.device) -> pa.Table:
    """The gradient rows of one shard (or of a unit's validation rows) as an Arrow table in the
    gradients schema."""
    engine = PerSampleGradients(model, gradient_spec(cfg, task.final))
    all_columns = GradientSpec(norms=cfg.norms, groups=cfg.groups).columns
    parts: dict[str, list[torch.Tensor]] = {}
    labels, ids = [], []
    for x, y, sid in datasets.batches("train", task.ids, cfg.batch_size):
        out = engine.compute(x.to(device), y.to(device))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach().cpu())
        labels.append(y)
        ids.append(sid)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    n = len(task.ids)
    factor_type = pa.float16() if cfg.factor_dtype == "float16" else pa.float32()
    np_factor = np.float16 if cfg.factor_dtype == "float16" else np.float32
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array(torch.cat(ids).numpy().astype(np.int64)),
        "label": pa.array(torch.cat(labels).numpy().astype(np.int64)),
        "epoch": pa.array(np.full(n, task.epoch, dtype=np.int64)),
        "loss": pa.array(cat["loss"].float().numpy()),
        "correct": pa.array(cat["correct"].numpy()),
    }
    for col in all_columns:
        columns[col] = pa.array(cat[col].double().numpy()) if col in cat else pa.nulls(n, pa.float64())
    for name in ("err", "emb"):
        values = cat[name].float().numpy().astype(np_factor)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=factor_type),
                                                          values.shape[1])
    return to_arrow(pa.table(columns), "gradients")


def batch_bound_rows(model: Classifier, datasets: Datasets, train_ids: np.ndarray, epoch: int, cfg: GradientsConfig,
                     seed: int, device: torch.device) -> list[dict[str, object]]:
    """||Σ g_i|| and Σ ||g_i|| for random minibatches of the train split (the paper's Figure 1, l2)."""
    rng = np.random.default_rng(seed + 2)
    rows: list[dict[str, object]] = []
    size = min(cfg.bound_batch_size, len(train_ids))
    for b in range(cfg.bound_batches):
        ids = np.sort(rng.choice(train_ids, size=size, replace=False))
        x, y, _ = next(iter(datasets.batches("train", ids, size)))
        result = batch_bound(model, x.to(device), y.to(device), groups=cfg.groups, norms=("l2",))
        for col in GradientSpec(norms=("l2",), groups=cfg.groups).columns:
            rows.append({"batch": b, "epoch": epoch, "batch_size": size, "column": col,
                         "norm_of_sum": result[f"{col}_norm_of_sum"], "sum_of_norms": result[f"{col}_sum_of_norms"]})
    return rows


def compute_in_process(cfg: StudyConfig, root: StudyRoot, work: GradientsPlan, datasets: Datasets,
                       device: torch.device) -> float:
    """The plan's missing shards, one after another in this process (no Ray): what each actor
    of the cluster stage does for its share, for tests, benchmarks and debugging. Returns the
    seconds spent computing shards (model loads and writes excluded)."""
    record_manifest(root, work)
    model, epoch, compute_s = None, -1, 0.0
    for task in work.todo:
        if task.epoch != epoch:
            model, epoch = load_source_model(cfg, root, datasets, task.epoch, device), task.epoch
        start = time.perf_counter()
        shard = compute_task(model, datasets, task, cfg.gradients, device)
        compute_s += time.perf_counter() - start
        write_table(root, task.path, shard, task.kind)
    return compute_s


def rate_key(task: ShardTask) -> str:
    """The rate a task's rows are timed under: a final checkpoint's backward, a forward-only
    row (factor checkpoints and validation rows), or DeepFool's iterations."""
    if task.table == "perturbations":
        return "gradients.perturbation_row"
    return "gradients.final_row" if task.final else "gradients.factor_row"


def measured_rates(times: list[tuple[ShardTask, float]], stage_s: float, unit: Placement) -> dict[str, Rate]:
    """Seconds per row of each kind of task (:func:`rate_key`; each timed in its actor, its
    write included), and the stage's start-up: its wall time less the tasks' share."""
    rates: dict[str, Rate] = {}
    for key in sorted({rate_key(t) for t, _ in times}):
        mine = [(len(t.ids), s) for t, s in times if rate_key(t) == key]
        rates[key] = rate(sum(s for _, s in mine), sum(n for n, _ in mine), "row", unit.device, unit.threads)
    if times:
        work_s = sum(s for _, s in times) / unit.parallel
        rates["gradients.start"] = rate(stage_s - work_s, 1, "start", unit.device, unit.threads)
    return rates
