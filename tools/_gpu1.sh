python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1
export PYTHONPATH=/tmp/site:$PWD OUT
timeout 100 python3 -m pytest -m cuda -q -p no:cacheprovider -p xdist -n 8 tests/backends/cuda/test_triton_elementwise.py tests/backends/cuda/test_triton_gemm.py tests/backends/cuda/test_triton_launch.py > $OUT/tests-rerun.log 2>&1; echo tests rc=$?; tail -2 $OUT/tests-rerun.log
timeout 200 python3 bench/gpu.py --models bert-base --batches 1,128 --peers torch-compile --iterations 50 --out $OUT/bert-fp16.json > $OUT/bert-fp16.log 2>&1; echo gpu rc=$?
grep -E "batch=|Ember compute|reduce-overhead" $OUT/bert-fp16.log
