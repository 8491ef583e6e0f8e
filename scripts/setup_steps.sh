# step LABEL CMD...: run CMD with its output in .venv/setup-logs/<label>.log and print one line:
#   == LABEL ... done (12s)
# On a terminal the line shows the elapsed time while it runs, and a progress bar when
# PROGRESS_PATTERN (a grep -E pattern counting finished items in the log) and
# PROGRESS_TOTAL_FILE (the count seen last time; remembered after success) are set.
# On failure it prints the last 40 lines of the log and where the whole log is.
step() {
  local label="$1"; shift
  local slug logdir log start rc=0 pid total=0 done_count elapsed bar filled
  slug="$(echo "$label" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g' | cut -c1-60)"
  logdir=".venv/setup-logs"; [ -d .venv ] || logdir="/tmp/compress-lab-setup-logs"
  mkdir -p "$logdir"; log="$logdir/$slug.log"
  start=$(date +%s)
  if [ -n "${PROGRESS_TOTAL_FILE:-}" ] && [ -f "$PROGRESS_TOTAL_FILE" ]; then total=$(cat "$PROGRESS_TOTAL_FILE"); fi
  [ "$total" -gt 0 ] 2>/dev/null || total=150
  "$@" >"$log" 2>&1 &
  pid=$!
  if [ -t 1 ]; then
    while kill -0 "$pid" 2>/dev/null; do
      elapsed=$(( $(date +%s) - start ))
      if [ -n "${PROGRESS_PATTERN:-}" ]; then
        done_count=$(grep -c -E "$PROGRESS_PATTERN" "$log" 2>/dev/null || true)
        filled=$(( done_count * 30 / total )); [ "$filled" -gt 29 ] && filled=29
        bar="$(printf '%*s' "$filled" '' | tr ' ' '#')$(printf '%*s' $((30 - filled)) '' | tr ' ' '.')"
        printf '\r== %s [%s] %d/%d packages, %ds ' "$label" "$bar" "$done_count" "$total" "$elapsed"
      else
        printf '\r== %s ... %ds ' "$label" "$elapsed"
      fi
      sleep 1
    done
    printf '\r\033[K'
  fi
  wait "$pid" || rc=$?
  elapsed=$(( $(date +%s) - start ))
  if [ "$rc" != 0 ]; then
    echo "== $label ... FAILED (exit $rc after ${elapsed}s); the last lines of $log:" >&2
    tail -n 40 "$log" >&2
    return "$rc"
  fi
  if [ -n "${PROGRESS_PATTERN:-}" ] && [ -n "${PROGRESS_TOTAL_FILE:-}" ]; then
    grep -c -E "$PROGRESS_PATTERN" "$log" >"$PROGRESS_TOTAL_FILE" 2>/dev/null || true
  fi
  echo "== $label ... done (${elapsed}s)"
}
