#!/usr/bin/env bash
# Start the UM-ProtoShare MONAI Label server, bound to loopback unless HOST says otherwise:
#   bash deploy/monai_label/serve.sh <studies folder> [--port 8000] [--conf bundle <dir>] [--conf device cpu] ...
# HOST=0.0.0.0 exposes it to the network: do that only behind an authenticating proxy (MONAI Label has no auth
# by default and serves the studies' images to anyone who can reach it).
# LABEL_VENV picks the environment (default deploy/.venv-label, made by deploy/setup_envs.sh label).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
studies="${1:?usage: serve.sh <studies folder> [monailabel start_server options]}"
shift
venv="${LABEL_VENV:-$here/../.venv-label}"
# the `monailabel` script runs `python -m monailabel.main` with the python on PATH unless told otherwise
export MONAILABEL_PYEXE="${MONAILABEL_PYEXE:-$venv/bin/python}"
exec "$venv/bin/monailabel" start_server --app "$here" --studies "$studies" --host "${HOST:-127.0.0.1}" "$@"
