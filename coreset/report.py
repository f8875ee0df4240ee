"""Human-readable summaries of result tables (the tables themselves are the results)."""
from __future__ import annotations

import pandas as pd

from coreset.stages.retrain import summary_table


def format_summary(accuracy: pd.DataFrame) -> str:
    """method x fraction table of final test accuracy, mean ± std over seeds, per target model."""
    table = summary_table(accuracy)
    blocks = []
    for target, rows in table.groupby("target_model"):
        cell = rows.apply(lambda r: f"{100 * r.test_acc_mean:.2f} ± {100 * (r.test_acc_std if r.seeds > 1 else 0):.2f}",
                          axis=1)
        grid = rows.assign(cell=cell).pivot(index="method", columns="fraction", values="cell").fillna("")
        grid.index.name = None  # one header line: the fractions
        title = f"test accuracy (%) of {target} by method and fraction, mean ± std over seeds:"
        blocks.append(f"{title}\n{grid.to_string()}")
    return "\n\n".join(blocks)


def print_summary(accuracy: pd.DataFrame) -> None:
    print(format_summary(accuracy), flush=True)
