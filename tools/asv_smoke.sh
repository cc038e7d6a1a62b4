#!/usr/bin/env bash
# CI check that the asv suite stays runnable, against the current environment (the
# logitcore installed in the active Python, no asv virtualenvs, no builds):
#   1. `asv check`: every benchmark imports and has the right signatures;
#   2. one quick run of every benchmark and parameter set on tiny data
#      (LOGITCORE_ASV_TINY=1), failing if any benchmark fails, whatever asv's exit
#      status says. Skips (a backend not built, a peer not installed) are counted.
# ASV_SMOKE_BENCH=REGEX limits step 2 to the matching benchmarks (asv run -b).
# Discovery and results go to a temporary directory, never into asv_bench/.asv, so the
# tiny run cannot disturb the real results. About 1-2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../asv_bench"
if ! python -c "import asv" 2>/dev/null; then
    echo "asv smoke: asv is not installed in $(command -v python) (pip install asv)" >&2
    exit 1
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/logitcore-asv-smoke.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# A copy of asv.conf.json whose results, html and environments live in $scratch, for HEAD.
python - "$scratch" <<'PY'
import json, os, sys
from asv import util
scratch = sys.argv[1]
conf = util.load_json("asv.conf.json", js_comments=True)
conf.update(repo=os.path.abspath(conf["repo"]),
            benchmark_dir=os.path.abspath(conf["benchmark_dir"]),
            results_dir=os.path.join(scratch, "results"),
            html_dir=os.path.join(scratch, "html"),
            env_dir=os.path.join(scratch, "env"),
            # the checked-out commit: a CI clone of one branch has no local "main"
            branches=["HEAD"])
with open(os.path.join(scratch, "asv.conf.json"), "w") as f:
    json.dump(conf, f, indent=1)
PY
conf="$scratch/asv.conf.json"
export LOGITCORE_ASV_TINY=1

# asv run needs a machine description; --yes takes the defaults (a no-op if present).
asv machine --yes >/dev/null

echo "== asv check"
asv check --config "$conf" --python=same

echo "== asv run --quick (every benchmark, tiny data)"
commit=$(git rev-parse HEAD)
status=0
# --set-commit-hash makes asv save the results of this existing environment, so they
# can be checked below instead of trusting the exit status alone.
asv run --config "$conf" --python=same --quick --show-stderr ${ASV_SMOKE_BENCH:+-b "$ASV_SMOKE_BENCH"} \
    --set-commit-hash "$commit" 2>&1 | tee "$scratch/run.log" || status=$?

python - "$scratch" "$status" "${ASV_SMOKE_BENCH:-}" <<'PY'
import glob, itertools, json, math, os, re, sys
from asv import util
scratch, status, selection = sys.argv[1], int(sys.argv[2]), sys.argv[3]
benchmarks = util.load_json(os.path.join(scratch, "results", "benchmarks.json"), api_version=2)
files = [f for f in glob.glob(os.path.join(scratch, "results", "*", "*.json"))
         if not f.endswith("machine.json")]
if len(files) != 1:
    sys.exit(f"asv smoke: expected one results file, found {files}")
results = json.load(open(files[0]))
columns = results["result_columns"]
failed, skipped, ran = [], [], 0
for name, bench in sorted(benchmarks.items()):
    if name == "version" or (selection and not re.search(selection, name)):
        continue
    row = results["results"].get(name)
    if row is None:
        failed.append(f"{name}: no result recorded")
        continue
    values = dict(zip(columns, row))["result"]
    params = bench["params"]
    combos = itertools.product(*params) if params else [()]
    if not params:
        values = [values]
    for combo, value in zip(combos, values):
        label = f"{name}({', '.join(combo)})" if combo else name
        if value is None:
            failed.append(label)
        elif isinstance(value, float) and math.isnan(value):
            skipped.append(label)
        else:
            ran += 1
print(f"asv smoke: {ran} benchmark cases ran, {len(skipped)} skipped, {len(failed)} failed")
for label in failed:
    print(f"  FAILED {label}")
if failed or status != 0:
    sys.exit(f"asv smoke: FAILED (asv run exit status {status}); see the log above")
PY
echo "asv smoke: OK"
