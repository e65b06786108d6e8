#!/usr/bin/env bash
# Do the notebooks and the tests that compare with committed values pass whatever the CPU?
#
# Runs them under pytest (notebooks with nbval) once per setting of
#   ATEN_CPU_CAPABILITY = default | avx2 | unset  (torch's SIMD kernels: none, AVX2, the best the
#                                                 CPU has, e.g. AVX-512)
#   OMP_NUM_THREADS     = 1 | 2                    (torch's intra-op threads, where a notebook does
#                                                 not pin them itself)
# and prints one line per setting: pass or fail, with the failing notebooks and tests. A value
# that changes between settings depends on the CPU: the committed outputs of another machine's
# run would not match it.
#
#   scripts/check_cpu_kernels.sh                          # every notebook, 6 settings
#   scripts/check_cpu_kernels.sh notebooks/02_*.ipynb     # some notebooks only
#   PY=/path/to/python scripts/check_cpu_kernels.sh       # default: .venv/bin/python
#   CAPABILITIES="default unset" THREADS="1" scripts/check_cpu_kernels.sh
#
# Logs go to artifacts/cpu-matrix/<setting>.log. Exit status 1 if any setting failed. It runs
# the notebooks 6 times: about 6 x 4 minutes on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CAPABILITIES=${CAPABILITIES:-default avx2 unset}
THREADS=${THREADS:-1 2}
LOGS=artifacts/cpu-matrix
# The tests that compare a computation with committed values (measurements, fits, runs).
COMMITTED_TESTS=(
  tests/cost/test_timing.py::test_committed_calibration_is_the_fit_of_the_committed_measurements
  tests/cost/test_timing.py::test_predictions_meet_the_targets_on_held_out_shapes
  tests/cost/test_comm.py::test_committed_constants_equal_the_fit
  tests/cost/test_comm.py::test_model_against_nccl_measurements
  tests/cost/test_memory.py::test_matches_gpu_measurements
  tests/test_train.py::test_committed_balance_runs_cover_every_configuration_and_show_collapse
)
if [ $# -gt 0 ]; then NOTEBOOKS=("$@"); else NOTEBOOKS=(notebooks/*.ipynb); fi
[ -x "$PY" ] || { echo "check_cpu_kernels: $PY not found (run make setup, or set PY)"; exit 2; }
mkdir -p "$LOGS"
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

summary=()
failed=0
for cap in $CAPABILITIES; do
  for threads in $THREADS; do
    name="cap-${cap}_threads-${threads}"
    log="$LOGS/$name.log"
    if [ "$cap" = unset ]; then
      env=(-u ATEN_CPU_CAPABILITY)
    else
      env=(ATEN_CPU_CAPABILITY="$cap")
    fi
    env+=(OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads")
    kernel=$(env "${env[@]}" "$PY" -c \
      "import torch; print(torch.backends.cpu.get_cpu_capability())" 2>/dev/null || echo "?")
    start=$SECONDS
    env "${env[@]}" "$PY" -m pytest -q -rf -p no:cacheprovider --timeout=600 \
      --nbval "${NOTEBOOKS[@]}" "${COMMITTED_TESTS[@]}" >"$log" 2>&1
    status=$?
    took=$((SECONDS - start))
    # The failing notebooks (by file) and tests, from pytest's short summary.
    fails=$(grep -E '^FAILED ' "$log" | sed -E 's/^FAILED ([^:]+\.ipynb)::.*/\1/; s/^FAILED ([^ ]+).*/\1/' \
      | sort -u | tr '\n' ' ')
    if [ $status -eq 0 ]; then
      line="PASS  ATEN_CPU_CAPABILITY=$cap ($kernel) OMP_NUM_THREADS=$threads  ${took}s"
    else
      failed=1
      line="FAIL  ATEN_CPU_CAPABILITY=$cap ($kernel) OMP_NUM_THREADS=$threads  ${took}s  "
      line+="exit $status: ${fails:-see $log}"
    fi
    echo "$line"
    summary+=("$line")
  done
done
echo
echo "CPU matrix ($(nproc) cores, logs in $LOGS/):"
printf '  %s\n' "${summary[@]}"
exit $failed
