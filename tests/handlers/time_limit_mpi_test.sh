#!/usr/bin/env bash
# TimeLimit under real mpirun on N ranks whose fake clocks differ (time_limit_mpi_main.cc): every
# rank stops at the same iteration, the first where the furthest-ahead rank is over the 5 s limit,
# with the same outcome ("terminated by TimeLimit"). The same job with each rank deciding alone
# must fail this check (negative control: the check can fail).
set -uo pipefail
binary=$1
n=$2
source tests/mpi/mpi_lib.sh  # OpenMPI as root, ASan leak setting, `mpi` and `fail`

# check OUTPUT WANT_ITERATION: prints why and returns 1 unless every rank reports the same stop
# at WANT_ITERATION.
check() {
  local out=$1 want=$2 lines first
  lines=$(grep -E "^rank [0-9]+: " <<<"$out" | sort)
  [[ $(grep -c . <<<"$lines") -eq $n ]] || { echo "not every rank reported"; return 1; }
  first=$(head -1 <<<"$lines" | sed -E 's/^rank [0-9]+: //')
  while read -r line; do
    [[ $(sed -E 's/^rank [0-9]+: //' <<<"$line") == "$first" ]] || { echo "ranks differ: '$line' vs rank 0: '$first'"; return 1; }
  done <<<"$lines"
  [[ $first == "OK; stopped=1 epoch=$(((want + 3) / 4)) iteration=$want; terminated by TimeLimit at epoch $(((want + 3) / 4))"* ]] ||
    { echo "unexpected outcome: '$first' (want a TimeLimit stop at iteration $want)"; return 1; }
}

# The first iteration k (1 s steps) at which a clock `ahead` seconds ahead is over 5 s.
first_over() { local k=1; while ((k + $1 <= 5)); do ((++k)); done; echo $k; }

for clocks in staggered last; do
  if [[ $clocks == staggered ]]; then want=$(first_over $((n - 1))); else want=$(first_over 2); fi
  out=$(timeout 60 "${mpi[@]}" -np "$n" "$binary" "$clocks" agreed 2>&1)
  rc=$?
  echo "== $clocks agreed: exit $rc, want iteration $want"
  grep -E "^rank " <<<"$out" | sort
  [[ $rc -eq 0 ]] || fail "$clocks: exit $rc: $out"
  why=$(check "$out" "$want") || fail "$clocks: $why"
done

# Negative control: deciding alone, the ranks stop at different iterations and the check says so.
out=$(timeout 60 "${mpi[@]}" -np "$n" "$binary" staggered local 2>&1)
echo "== staggered local: exit $?"
grep -E "^rank " <<<"$out" | sort
if why=$(check "$out" "$(first_over $((n - 1)))"); then
  fail "ranks deciding alone passed the check: it cannot catch a broken agreement"
fi
echo "(as it must, the check rejects it: $why)"
echo OK
