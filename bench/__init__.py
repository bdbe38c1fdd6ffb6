"""`benchmark.py bench`: side-by-side performance comparisons, one module each (train, score, laplace_torch,
tfb, samples, quick), sharing bench/common.py; bench/cli.py runs them and writes the JSON."""
