#!/usr/bin/env bash
# HERE (the dev machine, with PyPI), from the repository root:
#
#   bash recipes/default_model/pack_for_device.sh [--corpus /work/corpus] [more pack.py options]
#
# 1. downloads into .whl/ the wheels the accelerator machine lacks (Python 3.12, manylinux x86_64);
#    nflows, encodec and docopt publish no wheels, so they are built here (pure Python);
# 2. packs the corpus into .devpack/ (recipes/default_model/pack.py): hibari voices to regenerate
#    there, every other voice as Opus, as many hours as fit;
# 3. prints what travels (tree + .whl + .devpack [+ .devstate]) and fails if it is over 60 MiB.
# Set LV_SKIP_WHEELS=1 to keep .whl/ as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(command -v /work/venv/bin/python || command -v python3)}

# The carried folders must never be committed: ignore them in this clone (as the device README does).
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
for d in /.whl/ /.devpack/ /.devstate/; do
  grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"
done

# name==version of every wheel the device needs beyond its image (torch, torchaudio, numpy, scipy,
# einops, accelerate, typer, tokenizers, safetensors, huggingface_hub, tqdm, pyyaml, tensorboard,
# matplotlib, sympy, onnxruntime are there; KINDS.md). Versions = the ones this project is tested with.
WHEELS=(x-transformers==2.31.10 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 torch-einops-utils==0.2.0
        einops==0.8.2 vocos==0.1.0 num2words==0.5.14 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
        hibari-tts==0.2.1)
SDISTS=(nflows==0.14 encodec==0.1.1 docopt==0.6.2)
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

have() {  # is a wheel of NAME==VERSION in .whl/ ?
  local name=${1%%==*} ver=${1##*==}
  name=$(echo "$name" | tr 'A-Z-' 'a-z_')
  ls .whl 2>/dev/null | tr 'A-Z' 'a-z' | grep -q "^${name}-${ver}-"
}
if [ -z "${LV_SKIP_WHEELS:-}" ]; then
  mkdir -p .whl
  for spec in "${WHEELS[@]}"; do
    have "$spec" || "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d .whl "$spec"
  done
  for spec in "${SDISTS[@]}"; do
    have "$spec" || "$PY" -m pip wheel -q --no-deps -w .whl "$spec"
  done
  # Two versions of one project stop the whole install there: drop versions we did not ask for.
  for spec in "${WHEELS[@]}" "${SDISTS[@]}"; do
    name=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_'); ver=${spec##*==}
    for f in .whl/*.whl; do
      base=$(basename "$f" | tr 'A-Z' 'a-z')
      case "$base" in "${name}-${ver}-"*) ;; "${name}-"*) echo "removing other version $f"; rm -f "$f" ;; esac
    done
  done
  echo "wheels: $(ls .whl/*.whl | wc -l) files, $(du -sb .whl | cut -f1) bytes"
fi

also=(--also .whl)
[ -d .devstate ] && also+=(--also .devstate)
"$PY" -m recipes.default_model.pack --out .devpack --max-mib 60 "${also[@]}" "$@"
