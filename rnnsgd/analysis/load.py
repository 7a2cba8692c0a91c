"""MLflow -> tidy pandas frames: one row per run, and a long history (run, step, metric, value).

The analysis reads only what MLflow holds (docs/metrics.md). A sweep is an MLflow experiment named after
it; each grid point is a child run tagged `sweep` and `point_id`. Where a point has several runs (a failed
attempt, then a finished re-run), the FINISHED one counts; resumed trials re-log the step after their last
checkpoint, so the history keeps one value per (run, metric, step): the last one logged.
"""

from __future__ import annotations

import pandas as pd
from mlflow.tracking import MlflowClient

from rnnsgd.config import FLAT_KEYS, TrialConfig
from rnnsgd.sweep.tracking import STATUS_RANK, resolve_tracking_uri, search_all, store_exists


class NoSuchSweep(ValueError):
    """The tracking store has no experiment or no runs for the sweep."""


def _client(tracking_uri: str | None) -> MlflowClient:
    """None: the store the CLI uses (MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db, where a sweep
    run from this folder wrote), not MLflow's own default. A SQLite store that is not there is NoSuchSweep:
    a client would create it."""
    uri = tracking_uri or resolve_tracking_uri(None, None, "tracking_uri")[0]
    if not store_exists(uri):
        raise NoSuchSweep(f"no tracking store at {uri}")
    return MlflowClient(tracking_uri=uri)


def load_runs(sweep: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per grid point: typed flat params (TrialConfig keys), final metrics, tags, status, run_id.

    `sweep` is the sweep's name (the file's `name`, with `-<variant>` for a variant: "e1-cpu").
    NoSuchSweep when the store, its experiment or its point runs are not there (reading creates nothing)."""
    try:
        client = _client(tracking_uri)
    except NoSuchSweep as e:
        raise NoSuchSweep(f"sweep {sweep!r}: {e}") from None
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise NoSuchSweep(f"sweep {sweep!r}: no MLflow experiment of that name at {client.tracking_uri}")
    runs = search_all(client, exp.experiment_id, f"tags.sweep = '{sweep}' and tags.point_id != ''")
    if not runs:
        raise NoSuchSweep(f"sweep {sweep!r}: the experiment has no point runs yet at {client.tracking_uri}")
    rows = []
    for r in runs:
        params = {k: v for k, v in r.data.params.items() if k in FLAT_KEYS}
        row = TrialConfig.from_flat(params).to_flat()
        row.update(r.data.metrics)
        row.update(
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "start_time": r.info.start_time,
                **{k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
            }
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    # when one point has several runs, a finished run beats a killed or failed one, then the newest wins
    df["_rank"] = df["status"].map(STATUS_RANK).fillna(9)
    df = df.sort_values(["_rank", "start_time"], ascending=[True, False]).drop_duplicates("point_id")
    return df.drop(columns="_rank").sort_values(list(_sort_keys(df))).reset_index(drop=True)


def _sort_keys(df: pd.DataFrame) -> list[str]:
    return [k for k in ("data.L", "model.m", "data.N", "train.eps", "seed.teacher", "seed.run") if k in df]


def load_history(
    runs: pd.DataFrame, tracking_uri: str | None = None, metrics: list[str] | None = None
) -> pd.DataFrame:
    """Long frame (run_id, point_id, step, metric, value) for the runs of `load_runs`, one value per step."""
    client = _client(tracking_uri)
    records = []
    for run_id, point_id in zip(runs["run_id"], runs["point_id"], strict=True):
        keys = metrics or [k for k in client.get_run(run_id).data.metrics]
        for key in keys:
            for m in client.get_metric_history(run_id, key):
                records.append((run_id, point_id, m.step, key, m.value, m.timestamp))
    hist = pd.DataFrame(records, columns=["run_id", "point_id", "step", "metric", "value", "timestamp"])
    hist = hist.sort_values("timestamp").drop_duplicates(["run_id", "metric", "step"], keep="last")
    return hist.drop(columns="timestamp").sort_values(["run_id", "metric", "step"]).reset_index(drop=True)
