"""How the Space's tables are laid out: column widths from the content, so that no header wraps inside a word and
free text (questions, tool outputs) wraps in columns of its own instead of squeezing the short ones.

Gradio's Dataframe sizes columns from their natural width unless given `column_widths`; with `wrap=True` the short
columns then shrink until their headers break a few letters per line ("ver/sio/n"). Every table here is therefore
given pixel widths: a short column is as wide as its longest header word or its longest cell (whichever is wider,
capped at MAX_PX), and the free-text columns share what is left of a page-wide table (TABLE_PX), by weight, never
less than MIN_TEXT_PX each. Cells wrap, and are cut at MAX_CHARS characters (a click on a cell, or the detail panel
beside the table, shows the full text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gradio as gr
import pandas as pd

CHAR_PX = 8.5  # one character of the tables' monospace font (IBM Plex Mono 14 px measures 8.4, bold included)
PAD_PX = 26  # a cell's padding
MAX_PX = 240  # a short column never takes more than this
HEADER_CHARS = (
    20  # a header up to this long stays on one line ("Δ accuracy (points)"); a longer one wraps between words
)
TABLE_PX = 1180  # a page-wide table (Gradio's container at its usual width, less the scrollbar)
MIN_TEXT_PX = 200  # a free-text column never gets less than this
MAX_CHARS = 240  # longer cells are cut in the table


def _longest(values: Iterable[Any]) -> int:
    return max((len(str(v)) for v in values if v is not None), default=0)


def column_widths(
    frame: pd.DataFrame, *, text: Mapping[str, float] | Iterable[str] = (), table_px: int = TABLE_PX
) -> list[str]:
    """Pixel widths, one per column of `frame`: every column is at least as wide as its longest header word (a header
    never breaks inside a word, whatever the rows hold) and as its whole header up to HEADER_CHARS; a short column as
    wide as its longest cell too (at most MAX_PX); the `text` columns ({column: weight}, or a list of equal weights)
    share the rest of `table_px`."""
    weights = dict(text) if isinstance(text, Mapping) else dict.fromkeys(text, 1.0)
    header = {
        c: max(max((len(w) for w in str(c).split()), default=1), min(len(str(c)), HEADER_CHARS)) * CHAR_PX + PAD_PX
        for c in frame.columns
    }
    short = {
        c: max(header[c], min(_longest(frame[c]) * CHAR_PX + PAD_PX, MAX_PX))
        for c in frame.columns
        if c not in weights
    }
    floor = {c: max(header[c], MIN_TEXT_PX) for c in frame.columns if c in weights}
    text_px = dict(floor)
    shared, rest = set(floor), max(0.0, table_px - sum(short.values()))
    while (
        shared
    ):  # share the rest by weight; a column whose share is below its floor keeps the floor, the others re-share
        total = sum(weights[c] for c in shared)
        below = {c for c in shared if rest * weights[c] / total < floor[c]}
        if not below:
            text_px.update({c: rest * weights[c] / total for c in shared})
            break
        shared -= below
        rest = max(0.0, rest - sum(floor[c] for c in below))
    return [f"{round(short[c] if c in short else text_px[c])}px" for c in frame.columns]


def sized(frame: pd.DataFrame, *, text: Mapping[str, float] | Iterable[str] = ()) -> dict[str, Any]:
    """A Dataframe update: the rows (under "value") and the column widths they need."""
    return gr.update(value=frame, column_widths=column_widths(frame, text=text))


def data_table(frame: pd.DataFrame, *, text: Mapping[str, float] | Iterable[str] = (), **kwargs: Any) -> gr.Dataframe:
    """A read-only Dataframe laid out as above: sized columns, wrapped cells, long cells cut at MAX_CHARS."""
    return gr.Dataframe(
        frame,
        interactive=False,
        wrap=True,
        max_chars=MAX_CHARS,
        column_widths=column_widths(frame, text=text),
        **kwargs,
    )
