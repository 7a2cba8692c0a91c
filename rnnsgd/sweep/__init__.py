"""The sweep service: YAML grids (spec) run as Ray Tune trials (runner, trial), tracked in MLflow (tracking).

    spec.py      sweep-file schema, validation, variants, `--set` overrides, grid expansion, point ids
    tracking.py  every MLflow call: experiment, parent run, child runs, statuses, batched metrics
    jobs.py      what the driver hands its trials (TrialContext, Job) and what they report back (Message)
    trial.py     the function one Ray Tune trial runs: checkpoints, resume, device; it never calls MLflow
    recorder.py  the points' runs, written by the driver from the trials' reports (a Tune callback)
    packing.py   which points share a trial (packs of one shape, balanced over the trial slots)
    faults.py    RNNSGD_FAULT, the fault injection the tests use
    runner.py    the driver: Ray start/join, resume and grow, one Tuner over the missing points
    localray.py  Ray joined at RAY_ADDRESS, or started locally: loopback only, and gone with its driver
    progress.py  the live progress line (a Tune callback)
    status.py    `rnnsgd status`: the grid's coverage, read from MLflow

See docs/sweeps.md.
"""

from rnnsgd.sweep.spec import Point, Sweep, SweepError, load_sweep

__all__ = ["Point", "Sweep", "SweepError", "load_sweep"]
