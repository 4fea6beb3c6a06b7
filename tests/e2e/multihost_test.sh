#!/usr/bin/env bash
# Two simulated hosts on one machine: two network namespaces joined by a veth pair, mpirun started
# in the first with an rsh agent that starts OpenMPI's daemons inside the namespace that owns each
# host address, the TCP transport only. Checks that 2 hosts x 2 ranks train to the same decisions
# as 4 ranks on one host, on MPI and on Gloo (a process per rank started in its namespace with
# RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT only, as a Kubernetes operator does), and that cutting one host's link mid-run makes every surviving rank fail
# within the deadline naming the event and iteration, with the checkpoints intact and resumable.
# Needs from the machine: root (ip netns, iproute2), two addresses in a 10.x.y.0/24 that exist only
# inside the two namespaces; elsewhere the test is reported as skipped, with the reason. Leaves
# nothing: on every exit path the processes left in the namespaces are killed and both namespaces
# (with the veth pair, and their /run/netns entries) are deleted. No file of the machine's is written.
#   multihost_test.sh TRAIN CKPT
set -uo pipefail
train=$(realpath "$1")
ckpt=$(realpath "$2")
MODE=multihost
source "$(dirname "$0")/lib.sh"
work=${TEST_TMPDIR:-$(mktemp -d)}/multihost
rm -rf "$work" && mkdir -p "$work"

id=$$
h1=ember$id-a h2=ember$id-b v1=ev$id-a v2=ev$id-b
net=10.$((id % 200 + 20)).$((id / 200 % 250)).
a1=${net}1 a2=${net}2
made=()  # what this run created, and only that, is removed
cleanup() {
  local ns pids
  kill_jobs
  for ns in "${made[@]}"; do
    [[ $ns == "$v1" ]] && { ip link del "$v1" 2>/dev/null; continue; }  # left outside its namespace
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP
ip netns add "$h1" 2>/dev/null && made+=("$h1") || skip "cannot create network namespaces here (ip netns add needs root)"
ip netns add "$h2" && made+=("$h2") && ip link add "$v1" type veth peer name "$v2" && made+=("$v1") && ip link set "$v1" netns "$h1" &&
  ip link set "$v2" netns "$h2" && ip -n "$h1" addr add "$a1/24" dev "$v1" && ip -n "$h2" addr add "$a2/24" dev "$v2" &&
  ip -n "$h1" link set "$v1" up && ip -n "$h2" link set "$v2" up && ip -n "$h1" link set lo up &&
  ip -n "$h2" link set lo up || skip "cannot set up the veth pair"
cat >"$work/agent.sh" <<AGENT
#!/bin/bash
host=\$1; shift
case \$host in $a1) ns=$h1 ;; $a2) ns=$h2 ;; *) echo "agent: unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod +x "$work/agent.sh"
printf '%s slots=2\n%s slots=2\n' "$a1" "$a2" >"$work/hosts"
hosts_mpirun() {
  timeout "$1" ip netns exec "$h1" mpirun --oversubscribe -np 4 --hostfile "$work/hosts" \
    --mca plm_rsh_agent "$work/agent.sh" --mca btl tcp,self \
    --mca btl_tcp_if_include "${net}0/24" --mca oob_tcp_if_include "${net}0/24" "${@:2}"
}
common=(--data=synthetic --epochs=6 --seed=3 --progress=none)

echo "== 4 ranks on one host"
one=$(timeout 300 mpirun --oversubscribe -np 4 --mca btl self,vader "$train" "${common[@]}" --output_dir="$work/one" 2>&1) ||
  fail "single host: $(tail -n 5 <<<"$one")"
echo "== 2 hosts x 2 ranks over TCP"
two=$(hosts_mpirun 300 "$train" "${common[@]}" --output_dir="$work/two" 2>&1) || fail "two hosts: $(tail -n 20 <<<"$two")"
l1=$(grep '^{"rank": 0' <<<"$one"); l2=$(grep '^{"rank": 0' <<<"$two")
echo "$l1"; echo "$l2"
[[ $(grep -c '^{"rank"' <<<"$two") -eq 4 ]] || fail "not 4 final lines from two hosts"
for f in epoch iteration stopped_by; do
  [[ $(field "$l1" $f) == $(field "$l2" $f) ]] || fail "$f differs: $(field "$l1" $f) vs $(field "$l2" $f)"
done
awk -v a="$(field "$l1" best_score)" -v b="$(field "$l2" best_score)" 'BEGIN { d = a - b; exit !(d < 0.01 && d > -0.01) }' ||
  fail "accuracy differs: $(field "$l1" best_score) vs $(field "$l2" best_score)"

echo "== 2 hosts x 2 ranks on Gloo, one pod per rank as a Kubernetes operator starts them"
# RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT only; both namespaces share this machine's host name,
# which resolves to a loopback address: each rank must listen where it reaches MASTER_ADDR from.
port=$((29000 + id % 1000))
for r in 0 1 2 3; do
  ns=$h1
  ((r >= 2)) && ns=$h2
  timeout 120 ip netns exec "$ns" env -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE RANK=$r WORLD_SIZE=4 \
    MASTER_ADDR="$a1" MASTER_PORT="$port" "$train" "${common[@]}" --init_timeout_s=30 --output_dir="$work/gloo" \
    >"$work/gloo-$r.log" 2>&1 &
done
wait_ok=1
for j in $(jobs -p); do wait "$j" || wait_ok=0; done
((wait_ok)) || fail "Gloo across two hosts: $(tail -n 3 "$work"/gloo-*.log)"
l3=$(grep -h '^{"rank": 0' "$work/gloo-0.log")
echo "$l3"
[[ $(cat "$work"/gloo-*.log | grep -c '"world_size": 4, .*"stopped_by": "completed"') -eq 4 ]] ||
  fail "not 4 completed final lines from Gloo on two hosts: $(grep -h '^{"rank"' "$work"/gloo-*.log)"
for f in epoch iteration stopped_by; do
  [[ $(field "$l1" $f) == $(field "$l3" $f) ]] || fail "Gloo: $f differs: $(field "$l1" $f) vs $(field "$l3" $f)"
done
awk -v a="$(field "$l1" best_score)" -v b="$(field "$l3" best_score)" 'BEGIN { d = a - b; exit !(d < 0.01 && d > -0.01) }' ||
  fail "Gloo: accuracy differs: $(field "$l1" best_score) vs $(field "$l3" best_score)"

echo "== cut the second host's link mid-run"
hosts_mpirun 120 "$train" --data=synthetic --epochs=500 --patience=1000 --deadline_s=5 --progress=none \
  --output_dir="$work/cut" >"$work/cut.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do [[ $(ls "$work/cut" 2>/dev/null | grep -c '\.pt$') -ge 2 ]] && break; sleep 0.2; done
ip -n "$h2" link set "$v2" down
cut_at=$(date +%s)
# The ranks on the first host must give up within the deadline (5 s) and print their final lines.
# (mpirun itself keeps waiting for the unreachable host's daemons; it is ended here.)
for _ in $(seq 1 300); do [[ $(grep -c '"stopped_by": "error"' "$work/cut.log") -ge 2 ]] && break; sleep 0.2; done
took=$(( $(date +%s) - cut_at ))
pkill -9 -f -- "--output_dir=$work/cut" 2>/dev/null
kill "$job" 2>/dev/null; wait "$job" 2>/dev/null
grep -E 'error|^\{"rank"' "$work/cut.log" | grep -v '^\[' | head -n 8
[[ $(grep -c '"stopped_by": "error"' "$work/cut.log") -ge 2 ]] || fail "the surviving ranks did not end after the cut"
[[ $took -lt 30 ]] || fail "the surviving ranks took ${took}s to end after the cut"
echo "surviving ranks ended ${took}s after the cut"
grep -qE "not every rank joined before the deadline.*\[(in the step function|at [A-Z_]+), epoch [0-9]+, iteration [0-9]+\]" "$work/cut.log" ||
  fail "no surviving rank reported the deadline with the event and iteration"
"$ckpt" verify "$work"/cut/*.pt || fail "checkpoints damaged by the cut"
ip -n "$h2" link set "$v2" up
echo "== link back: resume"
res=$(hosts_mpirun 300 "$train" --data=synthetic --epochs=200 --patience=2 --deadline_s=30 --progress=none \
  --output_dir="$work/cut" --resume 2>&1) || fail "resume after the cut: $(tail -n 10 <<<"$res")"
grep -E 'resumed from|^\{"rank": 0' <<<"$res"
grep -q "resumed from $work/cut/checkpoint_" <<<"$res" || fail "did not resume from a checkpoint"
echo OK
