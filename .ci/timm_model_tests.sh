#!/usr/bin/env bash
# timm's own model tests over the zoo: tests/test_models.py from the source distribution of the installed timm
# version (downloaded, not copied into the repository), run over the model names the zoo registers, with timm's
# size caps and the subset in .ci/timm_zoo_plugin.py. The plugin stops the run at collection if any of timm's generic
# tests is not collected once per zoo name. Extra arguments go to pytest (e.g. -k fx).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-$repo/.venv/bin/python}
version=$("$python" -c "import timm; print(timm.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download "timm==$version" --no-binary :all: --no-deps --quiet -d "$work"
tar -xzf "$work/timm-$version.tar.gz" -C "$work" "timm-$version/pyproject.toml" "timm-$version/tests"
cd "$work/timm-$version"
PYTHONPATH="$repo/.ci:$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest tests/test_models.py \
    -p timm_zoo_plugin -p no:cacheprovider -q -rs "$@"
