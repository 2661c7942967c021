#!/usr/bin/env bash
# Issue 19's bf16 rows on a CPU with AMX, run on a lent GPU machine's host CPU (the device tool's
# machines; this repository's own machines since the fifteenth session are AMD EPYCs without AMX).
# Two cores on different physical cores are pinned with taskset and every runtime gets 2 threads,
# as on the 2-core Xeon the issue was measured on. Ember's persistent oneDNN convolutions need
# the GNU-OpenMP oneDNN wheels and ninja: put them in .whl-cpu/ (git-ignored) and carry it, e.g.
#   pip download onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 ninja --no-deps -d .whl-cpu
# One bench/cpu.py result file per model, rows.txt (every row, and the tail of any failed model's log)
# and machine.txt (CPU, flags, cores, extension) go to $OUT, the rest to $AUX (default /tmp/cpu-amx-aux):
# the device tool brings back at most 8 files from $OUT. A summary is printed last.
#   OUT=$OUT CPU_MODELS="mobilenet-v2 resnet-50" CPU_BATCHES=8 tools/cpu_amx_check.sh
# CPU_EXTRA adds bench/cpu.py arguments (e.g. "--accuracy-target 1e-2"); CPU_MODEL_S limits each model.
# CPU_RUN runs that shell command instead of the bench, pinned the same way (CPU_RUN_S limits it), e.g.
#   CPU_RUN="python3 bench/probes/cpu_bf16_ceiling.py mobilenet-v2 --out $OUT/ceiling.json"
# Exits 3 without running anything when the CPU has no AMX-BF16 (CPU_FORCE=1 runs anyway).
set -u
OUT=${OUT:-cpu-amx-$(date +%F)}
MODELS=${CPU_MODELS:-"mobilenet-v2 resnet-50 googlenet bert-base"}
BATCHES=${CPU_BATCHES:-8}
PRECISIONS=${CPU_PRECISIONS:-fp32,bf16}
LIMIT=${CPU_MODEL_S:-200}
AUX=${AUX:-/tmp/cpu-amx-aux}
mkdir -p "$OUT" "$AUX"
lscpu > "$AUX/lscpu.txt"
lscpu -p=CPU,CORE,SOCKET,NODE > "$AUX/lscpu-cores.txt"
grep -o -w -E 'amx_[a-z0-9]+|avx512[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ' > "$AUX/isa.txt"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) : $(cat "$AUX/isa.txt")" | tee "$OUT/machine.txt"
if ! grep -q -w amx_bf16 "$AUX/isa.txt" && [ -z "${CPU_FORCE:-}" ]; then
    echo "no AMX-BF16 on this CPU: nothing run"
    exit 3
fi
# the first two logical CPUs on distinct physical cores of socket 0
CORES=${CPU_CORES:-$(grep -v '^#' "$AUX/lscpu-cores.txt" | awk -F, '$3 == 0 && !seen[$2]++ {print $1}' | head -n 2 | paste -sd,)}
echo "pinned to CPUs $CORES" | tee -a "$OUT/machine.txt"
if compgen -G ".whl-cpu/onednn*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --ignore-installed --prefix /tmp/onednn .whl-cpu/onednn*.whl \
        > "$AUX/pip.log" 2>&1
    export EMBER_ONEDNN_PREFIX=/tmp/onednn
fi
command -v ninja > /dev/null || python3 -c "import ninja" 2> /dev/null || {
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl-cpu/ninja*.whl >> "$AUX/pip.log" 2>&1
    export PATH=/tmp/site/bin:$PATH
}
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
# the extension compiles once, with every core, before the pinned runs
python3 -c "from ember.backends.cpu import native; m = native.extension(); print('oneDNN extension:', native.version_of(m) if m else native.unavailable_reason())" \
    > "$AUX/extension.log" 2>&1
tail -n 1 "$AUX/extension.log" | tee -a "$OUT/machine.txt"
grep -q 'oneDNN extension: [0-9]' "$AUX/extension.log" || { echo "no oneDNN extension: Ember would not run its best CPU path"; exit 4; }
if [ -n "${CPU_RUN:-}" ]; then  # another command instead of the bench, pinned alike (probes)
    timeout "${CPU_RUN_S:-540}" taskset -c "$CORES" bash -c "$CPU_RUN"
    exit $?
fi
summary=()
for model in $MODELS; do
    t0=$SECONDS
    timeout "$LIMIT" taskset -c "$CORES" python3 bench/cpu.py --models "$model" --batches "$BATCHES" \
        --precision "$PRECISIONS" --peers onnxruntime --threads 2 --rounds 3 --iterations 12 --gap-ms 100 \
        --no-profile ${CPU_EXTRA:-} --out "$OUT/cpu-$model.json" > "$AUX/$model.log" 2>&1
    rc=$?
    summary+=("$(printf '%-13s rc=%-3s %4ss' "$model" "$rc" "$((SECONDS - t0))")")
    grep -E '^ *[a-z0-9-]+ b[0-9]' "$AUX/$model.log" >> "$OUT/rows.txt"
    [ "$rc" = 0 ] || { echo "--- $model failed (rc=$rc), its log's tail:"; tail -n 15 "$AUX/$model.log"; } >> "$OUT/rows.txt"
done
printf '%s\n' "${summary[@]}"
cat "$OUT/rows.txt" 2> /dev/null
