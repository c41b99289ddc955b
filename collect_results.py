"""Collect the ``summary.json`` files of a training multirun into one Markdown table (and optionally a CSV).

    python collect_results.py multirun/train/<run id>            # every job below that directory
    python collect_results.py outputs/digits_mixers --csv mixers.csv
    python collect_results.py multirun/pathfinder/<run id> --by-mixer   # one row per mixer, mean ± std over seeds

The implementation (job rows, MACs at each job's image size, the per-mixer table) is ``mixerzoo.tools.results``,
which the tools import too; this script is its command line.
"""

from mixerzoo.tools.results import main

if __name__ == "__main__":
    main()
