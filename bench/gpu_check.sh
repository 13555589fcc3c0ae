#!/usr/bin/env bash
# One prepared device check for issue 15 (run it in one call on a CUDA machine; results to $OUT):
#   bash bench/gpu_check.sh
# - bench/side_by_side.py --device cuda at batch 8, 800x1088, fp32 then bf16 (detrkit vs transformers,
#   ops, host reads, torch.cuda.set_sync_debug_mode syncs, peak memory);
# - the model tests (CUDA-only ones included).
# Each part has its own time limit so that one slow part does not eat the others' results.
set -u
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
PY=${PY:-python}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
for precision in fp32 bf16; do
  timeout 200 "$PY" bench/side_by_side.py --device cuda --batch 8 --hw 800x1088 --precision "$precision" \
    --repeats 3 --steps 5 --tag "$precision" --no-results-md > "$OUT/side_by_side_$precision.log" 2>&1
  cp bench/results/side_by_side_cuda_"$precision".json "$OUT/" 2>/dev/null
done
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_criterion.py tests/models/test_ms_deform_attn.py \
  tests/models/test_op_count.py > "$OUT/pytest_models.log" 2>&1
echo "done: $(ls "$OUT")"
