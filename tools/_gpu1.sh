python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1
export PYTHONPATH=/tmp/site:$PWD
timeout 150 python3 -m pytest -m cuda -q -p no:cacheprovider -p xdist -n 4 tests/backends/cuda/test_triton_launch.py tests/builder/test_int8_cuda.py tests/backends/cuda/test_cuda_tuning.py tests/builder/test_tactics.py > $OUT/tests.log 2>&1; echo tests rc=$?; tail -3 $OUT/tests.log
timeout 150 python3 bench/probes/build_time.py --model resnet-50 --batch 256 --precision int8 --out $OUT > $OUT/build-int8.log 2>&1; echo build rc=$?
timeout 290 python3 bench/gpu_int8.py --models resnet-50 --batches 256 --quantized int8 --calib-samples 64 --eval-samples 256 --iterations 30 --out $OUT/int8-resnet.json > $OUT/int8.log 2>&1; echo int8 rc=$?
grep -E "cold_s|warm_s|cuDNN|Triton|other|GPU" $OUT/build-int8.log
grep -h "compiled ahead" $OUT/*.log | head -3
tail -2 $OUT/int8.log
