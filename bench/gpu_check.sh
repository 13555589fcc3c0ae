#!/usr/bin/env bash
# One prepared device check for issue 15 (run it on a CUDA machine; results to $OUT):
#   bash bench/gpu_check.sh                       # all parts, in this order
#   PARTS="triton" bash bench/gpu_check.sh        # only some (split across calls: one call is <= 10 min)
# Parts (each with its own time limit, so that one slow part does not eat the others' results):
# - triton (<= 120 + 240 + 150 s): the Triton multi-scale deformable attention
#   * tests/models/test_ms_deform_attn_triton.py on the GPU (compiled kernels, no TRITON_INTERPRET):
#     forward / gradient parity with the PyTorch reference, gradcheck in float64, module dispatch;
#   * bench/ms_deform_attn_bench.py --kernels: forward and forward+backward time of the kernels, the
#     stacked PyTorch path and the per-level reference (and their errors against it),
#     at Deformable-DETR-R50 sizes (batch 8, 800x1088 -> levels /8../64, 8 heads, 4 points; the
#     decoder's 300 queries and the encoder's full-size queries; fp32 and bf16 values), block_q sweep;
#   * bench/ms_deform_attn_bench.py --share on deformable-detr-r50 at batch 8, 800x1088: training
#     step time and the attention's share with the per-level reference, the stacked PyTorch path and
#     the kernels, interleaved in one run.
# - side_by_side (<= 2 x 200 s): bench/side_by_side.py --device cuda at batch 8, 800x1088, fp32 then
#   bf16 (detrkit vs transformers, ops, host reads, set_sync_debug_mode syncs, peak memory); detrkit's
#   Deformable DETR now runs the Triton kernels there (DETRKIT_MS_DEFORM_ATTN=auto).
# - pytest (<= 150 s): the model tests (CUDA-only ones included).
set -u
OUT=${OUT:-bench/results/gpu_check}
PARTS=${PARTS:-"triton side_by_side pytest"}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
unset TRITON_INTERPRET DETRKIT_MS_DEFORM_ATTN  # the compiled kernels, chosen by the default dispatch
PY=${PY:-python}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" > "$OUT/versions.txt" 2>&1

if [[ " $PARTS " == *" triton "* ]]; then
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rA tests/models/test_ms_deform_attn_triton.py \
    > "$OUT/pytest_triton.log" 2>&1
  echo "pytest triton: exit $?" >> "$OUT/status.txt"
  timeout 240 "$PY" bench/ms_deform_attn_bench.py --kernels --device cuda --batch 8 --hw 800x1088 --iters 10 \
    --sweep-block-q 16 32 128 --out "$OUT/ms_deform_attn_kernels.json" > "$OUT/ms_deform_attn_kernels.log" 2>&1
  echo "kernels bench: exit $?" >> "$OUT/status.txt"
  timeout 150 "$PY" bench/ms_deform_attn_bench.py --share --device cuda --models deformable-detr-r50 --batch 8 \
    --hw 800x1088 --repeats 3 --backends reference torch triton --out "$OUT/ms_deform_attn_share.json" \
    > "$OUT/ms_deform_attn_share.log" 2>&1
  echo "share bench: exit $?" >> "$OUT/status.txt"
fi

if [[ " $PARTS " == *" side_by_side "* ]]; then
  for precision in fp32 bf16; do
    timeout 200 "$PY" bench/side_by_side.py --device cuda --batch 8 --hw 800x1088 --precision "$precision" \
      --repeats 3 --steps 5 --tag "$precision" --no-results-md > "$OUT/side_by_side_$precision.log" 2>&1
    echo "side_by_side $precision: exit $?" >> "$OUT/status.txt"
    cp bench/results/side_by_side_cuda_"$precision".json "$OUT/" 2>/dev/null
  done
fi

if [[ " $PARTS " == *" pytest "* ]]; then
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_criterion.py tests/models/test_ms_deform_attn.py \
    tests/models/test_op_count.py > "$OUT/pytest_models.log" 2>&1
  echo "pytest models: exit $?" >> "$OUT/status.txt"
fi
echo "done: $(ls "$OUT")"
