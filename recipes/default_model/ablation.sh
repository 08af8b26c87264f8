#!/usr/bin/env bash
# The reading ablation of issue 10: each variant trains stage lm for the same CPU time (one thread,
# limited with `ulimit -t`, so a busy machine does not favour one variant), then its newest
# checkpoint is exported and scored. Everything but the variant's options is the CPU recipe
# (recipes/configs/small-cpu-lm.yaml: cached posteriors, 150 s batches, bf16, LR 1e-3).
#
#   bash recipes/default_model/ablation.sh 45 /work/runs/ablation baseline r2-prenet r2-prenet-phonemes full
#
# Per variant: OUT/VARIANT/ (the run), OUT/VARIANT-export/ (the model), OUT/VARIANT-eval/ (WER on 20
# held-out sentences, default voice), and one row in OUT/table.md with the last validation's KL,
# text-use gap (KL without text - KL with it) and alignment diagonality.
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:?CPU minutes per variant}; out=${2:?output folder}; shift 2
corpus=${CORPUS:-/work/corpus}
declare -A options=(
  [baseline]="model.lm.reduction_factor=1 model.lm.prenet_dim=0 model.lm.align_layer=0 model.lm.input_noise=0 model.text.frontend=bpe model.text.vocab_size=1024 model.loss.align_weight=0"
  [r2-prenet]="model.lm.align_layer=0 model.text.frontend=bpe model.text.vocab_size=1024 model.loss.align_weight=0"
  [r2-prenet-phonemes]="model.lm.align_layer=0 model.loss.align_weight=0"
  [full]=""
)
mkdir -p "$out"
[ -f "$out/table.md" ] || printf '| variant | CPU min | steps | val KL | text-use gap | diagonality | WER %% (20 sentences) |\n| --- | --- | --- | --- | --- | --- | --- |\n' > "$out/table.md"
for variant in "$@"; do
  [[ -v options[$variant] ]] || { echo "unknown variant $variant (${!options[*]})" >&2; exit 2; }
  sets=(--set train.checkpoint_every=50 --set train.val_every=50 --set train.keep_last=1)
  for o in ${options[$variant]}; do sets+=(--set "$o"); done
  resume=(); [ -d "$out/$variant/checkpoints" ] && resume=(--resume)
  # ulimit -t ends the process (SIGXCPU) after its CPU budget; checkpoints every 50 steps survive it.
  (ulimit -t $((minutes * 60)); OMP_NUM_THREADS=1 nice -n 5 python recipes/train.py \
      --config recipes/configs/small-cpu-lm.yaml --run-dir "$out/$variant" --no-progress "${resume[@]}" "${sets[@]}" \
      > "$out/$variant.log" 2>&1) || true
  python -m recipes.default_model.export_run "$out/$variant" "$out/$variant-export" --corpus "$corpus" > /dev/null
  OMP_NUM_THREADS=1 python recipes/eval.py --corpus "$corpus" --model-dir "$out/$variant-export" --max-items 20 \
      --metrics asr --voice default --out "$out/$variant-eval" > /dev/null
  python - "$out" "$variant" "$minutes" <<'PY'
import json, sys
from pathlib import Path
out, variant, minutes = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [json.loads(line) for line in (out / variant / "metrics.jsonl").read_text().splitlines()]
val = [r for r in rows if r["split"] == "val"][-1]
steps = max(r["step"] for r in rows if r["split"] == "train")
summary = json.loads((out / f"{variant}-eval" / "summary.json").read_text())
wer = f"{100 * next(iter(summary['systems'].values()))['wer']:.1f}"
fmt = lambda key: f"{val[key]:.3f}" if key in val else "—"
with (out / "table.md").open("a") as f:
    f.write(f"| {variant} | {minutes} | {steps} (val at {val['step']}) | {fmt('kl')} | {fmt('text_gap')} | "
            f"{fmt('diagonality')} | {wer} |\n")
PY
done
cat "$out/table.md"
