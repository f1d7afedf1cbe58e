#!/usr/bin/env bash
# Set up (a virtual environment with boneage and its test tools) and run the whole test suite.
# The README's test command; .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  # torch's CUDA build (the one pinned below) fills about 6.5 GB: say so up front rather than fail mid-install
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  [ "${free_kb:-0}" -ge 7000000 ] \
    || echo "scripts/test.sh: only $(( ${free_kb:-0} / 1024 )) MB free here; the virtual environment needs about 6,500 MB"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch pinned to the build this project is tested with (any torch >= 2.4 works; this one installs from a local mirror)
python -m pip install -q torch==2.14.1 torchvision==0.29.1 -e '.[dev]'
# Debian packages that some tests use, installed when this runs as root (elsewhere those tests skip, saying so):
# chromium (the web page), orthanc + orthanc-dicomweb (a real PACS for `boneage node`), dicom3tools (dciodvfy)
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "could not install ${need[*]}: the tests that need them will be skipped"
fi
ruff check src tests benchmarks scripts
python -m pytest -q "$@"
