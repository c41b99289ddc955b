"""Benchmark models: params, MACs, inference/training throughput, latency and peak memory, with a reference model.

    python benchmark.py poolformerv2_s12 config:poolformerv2_s12 --img-size 224 448
    python benchmark.py --preset mixers --macs-only
    python benchmark.py --help

The implementation (model specs, MAC rules, timing, tables) is ``mixerzoo.tools.benchmarking``, which the tools
import too; this script is its command line. A requested row that failed (not an n/a size) makes the run fail.
"""

import sys

from mixerzoo.tools.benchmarking import failed_rows, main

if __name__ == "__main__":
    sys.exit(1 if failed_rows(main()) else 0)
