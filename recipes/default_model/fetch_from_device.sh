#!/usr/bin/env bash
# HERE, from the repository root, after a device call returned files (the reply's files_at folder):
#
#   bash recipes/default_model/fetch_from_device.sh FILES_AT                 # reassemble, install, verify
#   bash recipes/default_model/fetch_from_device.sh FILES_AT --stash         # + keep kit/state in .devstate/
#                                                                            #   (carry it after a lost lease)
# Extra options: --dest DIR (default llamavoice/checkpoints/default), --reencode-voices /work/corpus,
# --no-install, --device cpu. See recipes/default_model/fetch.py --help.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(command -v /work/venv/bin/python || command -v python3)}
exec "$PY" -m recipes.default_model.fetch "$@"
