#!/usr/bin/env bash
# CI hook for the deployment apps (issue 9): build deploy/.venv-deploy and deploy/.venv-label from scratch
# (nothing cached: no pip cache, no reused environment), then run the end-to-end tests of each app in its own
# environment. The core `make test` skips these tests (the SDKs are not in the core environment).
#   bash deploy/ci.sh                 # what .ci/run calls
#   REUSE_ENVS=1 bash deploy/ci.sh    # keep environments that finished installing (local reruns)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"
export PIP_NO_CACHE_DIR=1
start=$(date +%s)

for env in deploy label; do
    [[ "${REUSE_ENVS:-0}" == 1 ]] || rm -rf "$here/.venv-$env"
    t0=$(date +%s)
    bash "$here/setup_envs.sh" "$env"
    echo "deploy CI: .venv-$env ready in $(( $(date +%s) - t0 )) s, $(du -sh "$here/.venv-$env" | cut -f1)"
done

# a broken environment must fail here, not turn the tests into skips
ulimit -s 32768 2>/dev/null || true   # Holoscan's recommended stack size
"$here/.venv-deploy/bin/python" -c "import monai.deploy.operators.monai_bundle_inference_operator, highdicom" 2>/dev/null
"$here/.venv-label/bin/python" -c "import monailabel.transform.post, torchvision, requests_toolbelt"

status=0
t0=$(date +%s)
"$here/.venv-deploy/bin/python" -m pytest tests/deploy/test_monai_deploy.py -q -p no:cacheprovider -rs -rP || status=1
echo "deploy CI: Deploy app tests took $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
"$here/.venv-label/bin/python" -m pytest tests/deploy/test_monai_label.py -q -p no:cacheprovider -rs -rP || status=1
echo "deploy CI: Label app tests took $(( $(date +%s) - t0 )) s"
echo "deploy CI wall time: $(( $(date +%s) - start )) s"
exit "$status"
