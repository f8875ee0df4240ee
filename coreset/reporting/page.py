"""The report's ``index.html``: one static, self-contained page (inline style, no script, the
PNGs and CSVs beside it by relative link), so it opens from a local folder, an object-store
download or any static web server alike. Every piece of text is HTML-escaped."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

import pandas as pd

from coreset.reporting.figures import STAGES, FigureSpec

STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.95em; margin-top: 0.4em; } .missing { color: #777; font-style: italic; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; } th { background: #f3f3f3; }
"""


@dataclass(frozen=True)
class Table:
    """An HTML table of the page: a heading, the sentence that says what it holds, its CSV."""

    stage: str
    title: str
    note: str
    frame: pd.DataFrame
    csv: str | None


def html_table(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table; pandas escapes every cell and header."""
    return frame.to_html(index=False, escape=True, border=0, na_rep="")


def _figure(spec: FigureSpec, note: str | None) -> str:
    caption = (f"<strong>{escape(spec.title)}.</strong> Reproduces {escape(spec.reproduces)}. "
               f"{escape(spec.how_to_read)}")
    if note is not None:
        return f'<p class="missing">{caption} <em>Not drawn: {escape(note)}</em></p>'
    return (f'<figure id="{escape(spec.name)}"><img src="{escape(spec.name)}.png" alt="{escape(spec.title)}">'
            f'<figcaption>{caption} <a href="{escape(spec.name)}.csv">Data (CSV)</a>.</figcaption></figure>')


def _table(table: Table) -> str:
    link = f' <a href="{escape(table.csv)}">Data (CSV)</a>.' if table.csv else ""
    body = html_table(table.frame) if len(table.frame) else ""
    return f"<h3>{escape(table.title)}</h3><p>{escape(table.note)}{link}</p>{body}"


def render(title: str, root_url: str, specs: list[FigureSpec], notes: dict[str, str], tables: list[Table]) -> str:
    """The page: a heading per stage, each figure (or the sentence why it is missing), then that
    stage's tables. ``notes`` maps a figure name to why it was not drawn."""
    sections = []
    for stage in STAGES:
        parts = [_figure(s, notes.get(s.name)) for s in specs if s.stage == stage]
        parts += [_table(t) for t in tables if t.stage == stage]
        if parts:
            anchor = stage.lower().replace(" ", "-")
            sections.append(f'<section id="{escape(anchor)}"><h2>{escape(stage)}</h2>{"".join(parts)}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>Study root: <code>{escape(root_url)}</code>. Each figure links the table of the numbers it "
            f"draws.</p>{''.join(sections)}</body></html>\n")
