# device call 2: join the model, dequantise it, run the quick sweep (4 workers) and the Laplace variant study side by side
set -x
export PYTHONPATH=/tmp/site:$PWD BAYESPEFT_DATA_DIR=/tmp/data BAYESPEFT_CACHE=/tmp/cache PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=3
cp -r .dev/c2/data/* /tmp/data/
cat /tmp/m/gguf.a .dev/c2/gguf.b > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 3
python3 -c "
from pathlib import Path; from backbones.gguf_presets import _dequantize_to
_dequantize_to(Path('/tmp/m'), 'SmolLM2-135M-Instruct.Q4_1.gguf', Path('/tmp/cache/smollm2-135m'))" 2>&1 | tail -3
ls /tmp/cache/smollm2-135m || exit 4
S=${SWEEP_S:-450}
(timeout $S python3 benchmark.py sweep quick --results /tmp/q --workers 4 --storage /tmp/q.journal > $OUT/sweep.log 2>&1) &
(timeout $S python3 evidence/issue11/laplace_variants.py --adapter .dev/c2/adapter --task arc_easy --limit-train 500 --data-dir /tmp/data --out $OUT/laplace_variants.json > $OUT/lv.log 2>&1) &
wait
tail -30 $OUT/sweep.log; tail -5 $OUT/lv.log
tar czf $OUT/quick-gpu.tgz --exclude=artifacts -C /tmp q
