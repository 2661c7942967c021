OUT=$OUT GPU_STEPS="tests" TESTS_S=260 tools/gpu_check.sh 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD OUT
timeout 150 python3 bench/probes/bert_kernels.py --batch 128 > $OUT/bert_kernels.log 2>&1; echo bert rc=$?
timeout 170 python3 bench/gpu.py --models bert-base --batches 1,128 --peers torch-compile --iterations 50 --out $OUT/bert-fp16.json > $OUT/bert-fp16.log 2>&1; echo gpu rc=$?
grep -E "forward by events|kernels sum" $OUT/bert_kernels.log
grep -A12 '"FusedGemm' $OUT/bert_kernels.log | head -40
tail -8 $OUT/bert-fp16.log
tail -3 $OUT/tests.log
