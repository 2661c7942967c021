#!/usr/bin/env bash
# The GPU checks a session runs on a lent GPU machine, each under its own time limit, logs in $OUT
# (default ./gpu-check-<date>), a summary last. Steps (pick with GPU_STEPS="tests conformance int8"):
#   tests        pytest -m cuda (xdist when installed), without the ONNX backend cases
#   conformance  ONNX's backend cases on CUDA with a reason per failure (tools/gen_onnx_conformance.py)
#   int8         bench/gpu_int8.py: INT8 and FP8 against fp16, BERT-base b128 and ResNet-50 b256
#   fp16         bench/gpu.py: the fp16 table against torch and torch.compile
# Wheels the machine lacks (serve's, pytest-xdist) go in .whl/ and are installed to /tmp/site. The
# device tool allows 600 s a call: run one or two steps a call, e.g.
#   OUT=$OUT GPU_STEPS="tests conformance" tools/gpu_check.sh   (then GPU_STEPS=int8, GPU_STEPS=fp16)
set -u
OUT=${OUT:-gpu-check-$(date +%F)}
STEPS=${GPU_STEPS:-"tests conformance int8 fp16"}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$OUT/pip.log" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
XDIST=""
python3 -c "import xdist" 2> /dev/null && XDIST="-p xdist -n 8"
summary=()
run() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    summary+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$OUT/$name.log" | cut -c1-110)")")
}
for step in $STEPS; do
    case $step in
        tests) run tests "${TESTS_S:-300}" python3 -m pytest -m cuda $XDIST -q -p no:cacheprovider \
                   --ignore=tests/test_onnx_backend.py --deselect tests/zoo/test_minilm.py ;;
        # per-case lines (not -q): a run cut short still shows every case it ran; 78 s on the H100
        conformance) run conformance "${CONF_S:-240}" python3 tools/gen_onnx_conformance.py --device cuda --no-ort \
                         --json "$OUT/onnx-cuda.json" ${CONF_ARGS:-} ;;
        int8) run int8 "${INT8_S:-420}" python3 bench/gpu_int8.py --models bert-base resnet-50 --batches 128 \
                  --quantized int8 fp8 --calib-samples 64 --eval-samples 128 --iterations 30 --out "$OUT/int8.json" ;;
        fp16) run fp16 "${FP16_S:-420}" python3 bench/gpu.py --batches 1,128 --peers torch,torch-compile \
                  --iterations 50 --out "$OUT/fp16.json" ;;
        *) echo "unknown step $step" >&2 ;;
    esac
done
printf '%s\n' "${summary[@]}"
