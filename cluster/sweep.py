"""`ray submit`'s entry script: run a sweep on the cluster this head belongs to.

    ray submit cluster/aws-gpu.yaml cluster/sweep.py -- sweeps/e1.yaml --variant full --storage s3://BUCKET/rnnsgd

`ray submit` copies this file to the head and runs it there with the login shell's python; the arguments are
those of `rnnsgd sweep`, sweep files relative to the project as `ray up` synced it (~/rnnsgd, or
$RNNSGD_PROJECT). The sweep joins the running cluster (never a Ray of its own) with that project folder as the
runtime_env working_dir, so every trial, on every node, runs exactly the code that was synced, whatever the
node has installed. The tracking URI is the head's MLflow server (MLFLOW_TRACKING_URI, set by
cluster/setup-node.sh); token authentication comes from the same login environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("RNNSGD_PROJECT", "~/rnnsgd")).expanduser().resolve()


def main(argv: list[str]) -> int:
    os.chdir(PROJECT)  # sweep files and the default runs/ folder are relative to the project
    sys.path.insert(0, str(PROJECT))  # the driver runs the synced code too
    os.environ["RAY_ADDRESS"] = "auto"  # the cluster on this node; the sweep then treats it as a cluster
    from rnnsgd.sweep.localray import RAY_ENV

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    ray.init(address="auto", runtime_env={"working_dir": str(PROJECT)}, logging_level="WARNING")
    from rnnsgd.cli import main as rnnsgd_main

    return rnnsgd_main(["sweep", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
