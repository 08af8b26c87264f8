#!/usr/bin/env bash
# ON THE ACCELERATOR MACHINE, through the device tool, from the repository root:
#
#   bash recipes/default_model/run_on_device.sh auto      # setup | vae | lm | joint | export | auto | status
#
# with carry [".whl", ".devpack", ".devstate"] (see docs/default-model.md). Installs the carried
# wheels once per machine into $LV_WORK/site, then runs recipes/default_model/device.py, which
# continues where the previous call stopped and writes state.json, logs.tar.gz and the newest
# weights (kit.json + kit.partNN) into $OUT. Extra arguments go to device.py (--help lists them).
set -uo pipefail
export LV_CALL_START=${LV_CALL_START:-$(date +%s)}   # the driver's call budget counts from here
cd "$(dirname "$0")/../.." || exit 2
WORK=${LV_WORK:-/tmp/lvdev}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
if [ -d .whl ] && [ -z "${LV_SKIP_INSTALL:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  stamp=$(ls .whl/*.whl | sort | md5sum | cut -c1-16)
  if [ "$(cat "$WORK/site/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
      || { echo "error: installing the carried wheels (.whl/) failed" >&2; exit 3; }
    echo "$stamp" > "$WORK/site/.stamp"
    echo "installed $(ls .whl/*.whl | wc -l) wheels into $WORK/site"
  fi
fi
SITE=""
[ -f "$WORK/site/.stamp" ] && [ -z "${LV_SKIP_INSTALL:-}" ] && SITE="$WORK/site"   # also when .whl was not carried this time
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m recipes.default_model.device "$@"
