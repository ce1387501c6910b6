# Source me (`. .ci/services.sh`): install and start a PostgreSQL server (Debian package) and an
# MLflow tracking server backed by it, bound to 127.0.0.1, and export their URLs for the tests
# marked `services`: TUNELAB_TEST_POSTGRES_URL (Optuna storage), TUNELAB_TEST_MLFLOW_URL.
# Idempotent: a running cluster, role or database is reused. Needs root or sudo for apt-get.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { as_root su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
healthy() { python -c "import urllib.request as u; u.urlopen('$1/health', timeout=2)" 2> /dev/null; }

if ! command -v pg_ctlcluster > /dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null
fi
if [ -z "$(pg_lsclusters -h)" ]; then
  as_root pg_createcluster "$(ls /usr/lib/postgresql | sort -n | tail -1)" main
fi
read -r pg_version pg_cluster pg_port _ < <(pg_lsclusters -h | head -1)
as_root pg_ctlcluster "$pg_version" "$pg_cluster" start 2> /dev/null || true  # may be running
as_postgres "SELECT 1 FROM pg_roles WHERE rolname = 'tunelab'" | grep -q 1 \
  || as_postgres "CREATE ROLE tunelab LOGIN PASSWORD 'tunelab'"
for db in tunelab_optuna tunelab_mlflow; do
  as_postgres "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || as_postgres "CREATE DATABASE $db OWNER tunelab"
done
pg_url="postgresql://tunelab:tunelab@127.0.0.1:$pg_port"
export TUNELAB_TEST_POSTGRES_URL="$pg_url/tunelab_optuna"

mlflow_port="${TUNELAB_TEST_MLFLOW_PORT:-5055}"
export TUNELAB_TEST_MLFLOW_URL="http://127.0.0.1:$mlflow_port"
if ! healthy "$TUNELAB_TEST_MLFLOW_URL"; then
  mkdir -p /tmp/tunelab-mlflow-artifacts
  nohup mlflow server --backend-store-uri "$pg_url/tunelab_mlflow" \
    --artifacts-destination /tmp/tunelab-mlflow-artifacts \
    --host 127.0.0.1 --port "$mlflow_port" --workers 2 > /tmp/tunelab-mlflow-server.log 2>&1 &
  mlflow_pid=$!
  for _ in $(seq 120); do
    healthy "$TUNELAB_TEST_MLFLOW_URL" && break
    kill -0 "$mlflow_pid" 2> /dev/null || break  # it exited: the log says why
    sleep 1
  done
  healthy "$TUNELAB_TEST_MLFLOW_URL" \
    || { cat /tmp/tunelab-mlflow-server.log; echo "MLflow server did not start" >&2; false; }
fi
echo "services: PostgreSQL $pg_version on port $pg_port, MLflow server at $TUNELAB_TEST_MLFLOW_URL"
