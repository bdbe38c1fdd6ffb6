# device call 1: install the wheels, stage the model's first part and ARC, smoke-test every method on CUDA (tiny model)
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/c1/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD BAYESPEFT_DATA_DIR=/tmp/data PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=4
mkdir -p /tmp/m /tmp/data && cp .dev/c1/gguf.a /tmp/m/ && cp -r .dev/c1/data/* /tmp/data/
{ nvidia-smi -L; python3 -c "import torch, transformers, peft, laplace, optuna, zuko, datasets, gguf, tokenizers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'tokenizers', tokenizers.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee $OUT/env.txt
timeout 150 python3 benchmark.py sweep --methods zero_shot,lora,temperature,laplace_lora,tfb,blob,bayesian_lora,mc_dropout,lora_xs,l_lora_xs,ensemble --tasks arc_easy --ood arc_challenge --model tiny-random-llama --limit-train 16 --limit-eval 16 --set epochs=1 --device cuda --results /tmp/smoke 2>&1 | tee $OUT/smoke.log | tail -40
tar czf $OUT/smoke.tgz --exclude=artifacts -C /tmp smoke
