#!/usr/bin/env bash
# One entry point. Both commands install (or update) everything first, idempotently.
#   ./run.sh server [--config FILE] ...   start the server (offline defaults unless configured)
#   ./run.sh test [pytest args]           run the test suite
#   ./run.sh bench [args]                 run performance_tester.py
set -euo pipefail
cd "$(dirname "$0")"
cmd=${1:-server}
[ $# -gt 0 ] && shift
# The server's --config decides whether the Mandarin extras are needed; the test suite always
# needs them (it covers the offline Mandarin profile).
prev=""
for arg in "$@"; do
  case "$arg" in --config=*) export XZ_CONFIG=${arg#--config=} ;; esac
  [ "$prev" = --config ] && export XZ_CONFIG=$arg
  prev=$arg
done
[ "$cmd" = test ] && export XZ_ZH=1 XZ_TEST=1
bash scripts/install.sh
PY=${XZ_VENV:-$PWD/.venv}/bin/python
case "$cmd" in
  server) exec "$PY" -m server "$@" ;;
  test)
    set +e
    "$PY" -m pytest "$@"
    rc=$?
    # pytest exits 5 when it collected no test: that is a failure for us, not a pass.
    [ $rc -eq 5 ] && echo "no tests were collected" >&2
    exit $rc ;;
  bench) exec "$PY" performance_tester.py "$@" ;;
  *) echo "usage: ./run.sh server|test|bench [args]" >&2; exit 2 ;;
esac
