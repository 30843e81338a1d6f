#!/usr/bin/env bash
# Create the optional app environments (DESIGN §11), each in its own virtual environment:
#   bash deploy/setup_envs.sh deploy   -> deploy/.venv-deploy  (MONAI Deploy App SDK 4.0.0, core pins)
#   bash deploy/setup_envs.sh label    -> deploy/.venv-label   (MONAI Label 0.8.5, pydicom 2, torch 2.14.1)
#   bash deploy/setup_envs.sh all
# An environment that finished installing (stamp file .installed) is reused; delete its folder to rebuild it.
# Every pip call runs with PIP_CONSTRAINT pinning that environment's torch. An sdist whose build needs torch
# (monailabel's sam2) is built inside the environment, against its own torch: an isolated build environment
# would install a second copy of the CUDA torch (about 5 GB), which filled a CI machine's disk.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export SAM2_BUILD_CUDA=0   # sam2's optional CUDA kernel: the Label app runs no SAM model

make_env() {  # name, constraints file, requirements file, [sdists to build against the environment's torch]
    local venv="$here/.venv-$1" constraints="$2" requirements="$3" start
    if [[ -f "$venv/.installed" ]]; then
        echo "$venv: ready (delete the folder to rebuild it)"
        return
    fi
    start=$(date +%s)
    rm -rf "$venv"
    "$python" -m venv "$venv"
    export PIP_CONSTRAINT="$constraints"
    # torch first, alone, from its pin, so that nothing resolves against another build
    "$venv/bin/python" -m pip install --quiet "$(grep -m1 '^torch==' "$constraints")"
    if (( $# > 3 )); then
        # setuptools >= 70.1 builds wheels by itself (the venv's 65.5 would need `wheel`)
        "$venv/bin/python" -m pip install --quiet "$(grep -m1 '^setuptools==' "$constraints")"
        "$venv/bin/python" -m pip install --quiet --no-build-isolation "${@:4}"
    fi
    "$venv/bin/python" -m pip install --quiet -r "$requirements"
    # the project itself (monai_protoshare + data_prep); its dependencies came from the requirements file
    "$venv/bin/python" -m pip install --quiet --no-deps -e "$root"
    # Label needs pydicom<3; the project asks for pydicom>=3 only in its `dicom` extra (highdicom SEG, data_prep's
    # DICOM input), which the Label app does not import, so pip check has nothing to say about it
    local problems
    if ! problems=$("$venv/bin/python" -m pip check 2>/dev/null); then
        echo "$problems" >&2
        exit 1
    fi
    touch "$venv/.installed"
    echo "$venv: set up in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
}

case "${1:-}" in
    deploy) make_env deploy "$root/constraints.txt" "$here/monai_deploy/requirements.txt" ;;
    label) make_env label "$here/monai_label/constraints.txt" "$here/monai_label/requirements.txt" sam2 ;;
    all)
        make_env deploy "$root/constraints.txt" "$here/monai_deploy/requirements.txt"
        make_env label "$here/monai_label/constraints.txt" "$here/monai_label/requirements.txt" sam2
        ;;
    *)
        echo "usage: bash deploy/setup_envs.sh deploy|label|all" >&2
        exit 2
        ;;
esac
