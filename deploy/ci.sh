#!/usr/bin/env bash
# CI hook for the deployment apps (issue 9): build deploy/.venv-deploy and deploy/.venv-label from scratch
# (nothing cached: no pip cache, no reused environment) and run the end-to-end tests of each app in its own
# environment. The core `make test` skips these tests (the SDKs are not in the core environment).
#   bash deploy/ci.sh                 # what .ci/run calls
#   REUSE_ENVS=1 bash deploy/ci.sh    # reuse environments that finished installing, and keep them (local reruns)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"
export PIP_NO_CACHE_DIR=1
start=$(date +%s)

# One environment at a time: build it, check it, test it, then delete it (unless REUSE_ENVS=1) so that the two
# never take disk together (2.3 GB + 8.2 GB).
ulimit -s 32768 2>/dev/null || true   # Holoscan's recommended stack size
declare -A import_check=(
    [deploy]="import monai.deploy.operators.monai_bundle_inference_operator, highdicom"
    [label]="import monailabel.transform.post, torchvision, requests_toolbelt"
)
declare -A app_tests=([deploy]=tests/deploy/test_monai_deploy.py [label]=tests/deploy/test_monai_label.py)
status=0
for env in deploy label; do
    venv="$here/.venv-$env"
    [[ "${REUSE_ENVS:-0}" == 1 ]] || rm -rf "$venv"
    t0=$(date +%s)
    bash "$here/setup_envs.sh" "$env"
    echo "deploy CI: .venv-$env ready in $(( $(date +%s) - t0 )) s, $(du -sh "$venv" | cut -f1)"
    # a broken environment must fail here, not turn the tests into skips
    "$venv/bin/python" -c "${import_check[$env]}"
    t0=$(date +%s)
    "$venv/bin/python" -m pytest "${app_tests[$env]}" -q -p no:cacheprovider -rs -rP || status=1
    echo "deploy CI: $env app tests took $(( $(date +%s) - t0 )) s"
    [[ "${REUSE_ENVS:-0}" == 1 ]] || rm -rf "$venv"
done
echo "deploy CI wall time: $(( $(date +%s) - start )) s"
exit "$status"
