# device call 1 (regime check): install the wheels, stage the model's first part and ARC
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/c1/whl/*.whl || exit 3
mkdir -p /tmp/m /tmp/data && cp .dev/c1/gguf.a /tmp/m/ && cp -r .dev/c1/data/* /tmp/data/ && echo staged
