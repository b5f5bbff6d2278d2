#!/usr/bin/env bash
# Everything the test suite needs, on a fresh machine (README: "Run the tests"):
#   - the project and its test extras in .venv;
#   - the real receivers the integration tests talk to on loopback: Debian's Chromium (the run
#     report is checked in a real browser) and Prometheus Pushgateway (metrics are pushed to it);
#   - an MLflow tracking server in its own venv, .venv-mlflow, so its pins never meet Airflow's.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} from Debian's packages" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv-mlflow/bin/mlflow ]; then
  python3 -m venv .venv-mlflow
  .venv-mlflow/bin/pip install -q mlflow
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,airflow,spark]'
