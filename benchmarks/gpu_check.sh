#!/bin/bash
# GPU check: the CUDA tests, then each homework script's quick profile with --device cuda.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p $OUT
R=/tmp/gpu_results; P=/tmp/gpu_plots; mkdir -p $R $P
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch,torchvision,timm,platform;print('torch',torch.__version__,'torchvision',torchvision.__version__,'timm',timm.__version__,'python',platform.python_version(),torch.cuda.get_device_name())"
  nproc; } > $OUT/env.txt 2>&1
t0=$(date +%s)
timeout 180 python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider > $OUT/pytest_cuda.log 2>&1
echo "tests/test_cuda.py rc=$? wall_s=$(( $(date +%s) - t0 ))" >> $OUT/summary.txt
for s in homework_cnn_vs_fc_comparison homework_cnn_architecture_analysis homework_custom_layers_experiments; do
  t0=$(date +%s)
  timeout 200 python3 $s.py --profile quick --device cuda --data-dir "${1:?usage: gpu_check.sh DATA_DIR}" --results-dir $R --plots-dir $P \
    --cache-dir /tmp/cache > $OUT/$s.log 2>&1
  echo "$s.py rc=$? wall_s=$(( $(date +%s) - t0 ))" >> $OUT/summary.txt
done
cd /tmp && find gpu_results -name '*.json' -o -name '*.md' -o -name '*.csv' | tar czf $OUT/gpu_results.tgz -T -
cat $OUT/summary.txt
