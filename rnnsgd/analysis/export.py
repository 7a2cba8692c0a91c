"""A sweep's results as one table, a row per grid point (`rnnsgd export`): `load_runs`'s frame, ordered.

Columns: point_id, outcome, status; the config (TrialConfig's flat keys, in its order); the final metrics
(sorted); then the run id, start time (ms since the epoch) and the remaining tags. The rows and values are
`load_runs`'s, except that list-valued config keys (data.phi, data.lags) are written as MLflow params hold
them, comma-separated (`format_value`), so that CSV and Parquet carry the same text.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from rnnsgd.config import FLAT_KEYS, format_value

FORMATS = (".csv", ".parquet")
LEAD = ("point_id", "outcome", "status")


def points_table(runs: pd.DataFrame) -> pd.DataFrame:
    """`load_runs(...)` -> the exported table (see the module docstring)."""
    table = runs.copy()
    config = [k for k in FLAT_KEYS if k in table]
    for key in config:
        if table[key].map(lambda v: isinstance(v, tuple)).any():
            table[key] = table[key].map(format_value)
    lead = [k for k in LEAD if k in table]
    metrics = sorted(
        k for k in table if k not in config and k not in lead and pd.api.types.is_float_dtype(table[k])
    )
    rest = [k for k in table if k not in {*lead, *config, *metrics}]
    return table[[*lead, *config, *metrics, *rest]]


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """CSV or Parquet by the file's suffix; "-" is CSV on stdout. Parquet keeps the types; CSV writes floats
    with enough digits for `pd.read_csv` to read back the same values."""
    if str(out) == "-":
        table.to_csv(sys.stdout, index=False)
        return
    path = Path(out)
    if path.suffix not in FORMATS:
        raise ValueError(f"{out}: expected a .csv or .parquet file name (or - for CSV on stdout)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: never half a table
    if path.suffix == ".csv":
        table.to_csv(tmp, index=False)
    else:
        table.to_parquet(tmp, index=False)
    tmp.replace(path)
