#!/usr/bin/env bash
# A local MLflow tracking server for ispdc runs: SQLite (or any database URI) for runs and the model
# registry, artifacts served by the server itself (--serve-artifacts) from a folder, bound to 127.0.0.1.
#
#   scripts/mlflow_server.sh start [--dir DIR] [--port PORT] [--backend-store-uri URI]
#   scripts/mlflow_server.sh stop  [--dir DIR]
#   scripts/mlflow_server.sh status [--dir DIR]
#
# DIR (default runs/mlflow-server) holds mlflow.db, artifacts/, server.log and mlflow.pid.  Clients use
# `ispdc run ... --tracking-uri http://127.0.0.1:PORT`; artifacts go through the server, so clients need
# no access to DIR.  PostgreSQL: --backend-store-uri postgresql://user:pass@host/db (needs psycopg2).
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
command=$1; shift
dir=${MLFLOW_SERVER_DIR:-runs/mlflow-server}
port=${MLFLOW_SERVER_PORT:-5000}
backend=""
timeout=${MLFLOW_SERVER_TIMEOUT:-90}
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --backend-store-uri) backend=$2; shift 2 ;;
    *) echo "mlflow_server.sh: unknown option $1" >&2; usage ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
mlflow_bin=${MLFLOW:-$here/.venv/bin/mlflow}
[[ -x $mlflow_bin ]] || mlflow_bin=$(command -v mlflow || true)
python_bin=$(dirname "${mlflow_bin:-/usr/bin/python3}")/python
[[ -x $python_bin ]] || python_bin=python3
pidfile=$dir/mlflow.pid

alive() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case $command in
  start)
    [[ -n $mlflow_bin ]] || { echo "mlflow_server.sh: no mlflow executable (set MLFLOW=...)" >&2; exit 1; }
    if alive; then echo "mlflow_server.sh: already running (pid $(cat "$pidfile"))" >&2; exit 1; fi
    mkdir -p "$dir/artifacts"
    dir=$(cd "$dir" && pwd); pidfile=$dir/mlflow.pid
    backend=${backend:-sqlite:///$dir/mlflow.db}
    # setsid: the server and its worker share one process group, which `stop` ends by this PID.
    # The job runner (GenAI evaluation jobs: seven huey consumers, ~0.5 GB) is off unless asked for.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} setsid "$mlflow_bin" server --backend-store-uri "$backend" --artifacts-destination "$dir/artifacts" \
      --serve-artifacts --host 127.0.0.1 --port "$port" --workers 1 >"$dir/server.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for ((i = 0; i < timeout * 2; i++)); do
      if ! alive; then
        echo "mlflow_server.sh: server exited; last lines of $dir/server.log:" >&2; tail -n 20 "$dir/server.log" >&2
        rm -f "$pidfile"; exit 1
      fi
      if "$python_bin" -c "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
          2>/dev/null; then
        echo "http://127.0.0.1:$port (pid $(cat "$pidfile"), store $backend, artifacts $dir/artifacts)"
        exit 0
      fi
      sleep 0.5
    done
    echo "mlflow_server.sh: no answer on 127.0.0.1:$port after ${timeout} s; see $dir/server.log" >&2
    exit 1
    ;;
  stop)
    if ! alive; then echo "mlflow_server.sh: not running (no live pid in $pidfile)" >&2; rm -f "$pidfile"; exit 1; fi
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
    rm -f "$pidfile"
    echo "stopped pid $pid"
    ;;
  status)
    if alive; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; exit 1; fi
    ;;
  *) usage ;;
esac
