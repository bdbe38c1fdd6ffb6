# device call 2 (regime check): blob and lora with 4x the training questions (2000 x 2 epochs = 500 steps)
export PYTHONPATH=/tmp/site:$PWD BAYESPEFT_DATA_DIR=/tmp/data BAYESPEFT_CACHE=/tmp/cache PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=6
cat /tmp/m/gguf.a .dev/c2/gguf.b > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -c "
from pathlib import Path; from backbones.gguf_presets import _dequantize_to
_dequantize_to(Path('/tmp/m'), 'SmolLM2-135M-Instruct.Q4_1.gguf', Path('/tmp/cache/smollm2-135m'))" 2>&1 | tail -2
timeout ${SWEEP_S:-200} python3 benchmark.py sweep --methods lora,blob --tasks arc_easy --limit-train 2000 --limit-eval 500 --set epochs=2 --set lr=5e-4 --name regime --results /tmp/r --workers 2 --storage /tmp/r.journal > $OUT/sweep.log 2>&1
tail -8 $OUT/sweep.log
tar czf $OUT/regime.tgz --exclude=artifacts -C /tmp r
