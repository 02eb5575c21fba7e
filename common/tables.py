"""Markdown tables from data frames (reports and notes), without an extra dependency."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def cell(v, digits: int = 2) -> str:
    """A float with `digits` decimals (empty for NaN); anything else as text."""
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(frame: pd.DataFrame, columns: list | None = None, fmt: dict | None = None, digits: int = 2) -> str:
    """A GitHub markdown table of `columns` (default: all); `fmt` maps a column to its own formatter."""
    columns = list(frame.columns) if columns is None else columns
    fmt = fmt or {}
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(fmt[c](row[c]) if c in fmt else cell(row[c], digits) if c in row else ""
                                     for c in columns) + " |\n"
                   for _, row in frame.iterrows())
    return head + body
