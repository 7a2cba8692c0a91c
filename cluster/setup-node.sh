#!/usr/bin/env bash
# One node's set-up, run by `ray up` on the head and on every worker (setup_commands), after file_mounts put the
# project at ~/rnnsgd (the version on the machine that ran `ray up`) and the client's Ray token at
# ~/.ray/auth_token:
#   1. the project and its pinned dependencies (torch, ray, mlflow, psycopg) into the node's Python, editable,
#      so that re-running `ray up` (which syncs ~/rnnsgd again) is all a code change needs; skipped where
#      RNNSGD_SKIP_INSTALL=1 says that the login environment already has them (hosts prepared by hand; tests)
#   2. the login environment of every later command (`ray start`, `ray submit`, `ray exec`, the jobs and trials
#      Ray starts from them): token authentication on, and, on the head, the MLflow server that
#      cluster/mlflow-server.sh started there as the tracking URI (for the sweep's driver and `rnnsgd status`
#      in `ray exec`). Workers have no such server and need none: trials send their metrics to the driver with
#      their Tune reports, and the driver alone writes MLflow
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [[ ${RNNSGD_SKIP_INSTALL:-0} != 1 ]]; then
    python -m pip install -q -e "$root[cluster]"
fi

mkdir -p ~/.rnnsgd
cat >~/.rnnsgd/env <<'EOF'
# written by cluster/setup-node.sh; sourced by ~/.bashrc (Ray runs every command in a login shell)
export RAY_AUTH_MODE=token  # the token: ~/.ray/auth_token (a file mount of the client's own)
if [ -f "${MLFLOW_DIR:-$HOME/mlflow}/tracking_uri" ]; then  # written by cluster/mlflow-server.sh start
    MLFLOW_TRACKING_URI=$(cat "${MLFLOW_DIR:-$HOME/mlflow}/tracking_uri")
    export MLFLOW_TRACKING_URI
fi
EOF
line='[ -f ~/.rnnsgd/env ] && . ~/.rnnsgd/env'
touch ~/.bashrc
grep -qxF "$line" ~/.bashrc || echo "$line" >>~/.bashrc
