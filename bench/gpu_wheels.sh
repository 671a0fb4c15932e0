#!/bin/sh
# Download the wheels a GPU machine without network lacks (bench/gpu-wheels.txt) into DIR (default: wheels/,
# git-ignored), for CPython 3.12 on x86-64 Linux: binary wheels only, each without its dependencies (the list
# holds them all; torch is never downloaded). Run from the project root, with any Python that has pip:
#
#   PYTHON=.venv/bin/python sh bench/gpu_wheels.sh [DIR]
#
# Then, on the GPU machine, from the project root (the device tool: carry wheels/), install and run the check:
#
#   python3 -m pip install -q --no-index --find-links wheels -r bench/gpu-wheels.txt
#   python3 -m bench.gpu_check          # about 8 minutes; writes reports/gpu-check.json and .md
#
# pip resolves the list against what the machine has: a missing dependency fails the install rather than
# the check. If pip refuses to touch that environment, install beside it instead:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl && export PYTHONPATH=/tmp/site
set -eu
dir=${1:-wheels}
py=${PYTHON:-python3}
list=$(dirname "$0")/gpu-wheels.txt
mkdir -p "$dir"
grep -v '# sdist only' "$list" > "$dir/.binary.txt"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$dir" -r "$dir/.binary.txt"
rm "$dir/.binary.txt"
# no wheel on the registry: built here, pure Python, so the same wheel installs on any machine
sed -n 's/ *# sdist only.*//p' "$list" | xargs "$py" -m pip wheel --quiet --no-deps --wheel-dir "$dir"
echo "$(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"
