#!/usr/bin/env bash
# downtime-iperf.sh: the throughput dip a move causes, seen by stock `iperf3 -i 0.1`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: downtime-iperf.sh --ns NAMESPACE --target IPV4 [options] -- MOVE-COMMAND [ARGS...]

Runs stock `iperf3 -c TARGET -i 0.1 --json` from network namespace NAMESPACE against an
iperf3 server at TARGET (e.g. Roam's `iperf3` image), runs MOVE-COMMAND (e.g. a live
migration of that guest) once the test has run --lead seconds, lets iperf3 finish, then
prints from iperf3's own report:

  dip_mbps         the lowest 100 ms interval throughput (the dip), Mbit/s
  dip_at_s         when that interval started, seconds from iperf3's start
  median_mbps      the median interval throughput, for comparison
  mean_mbps        the time-weighted mean over the same intervals (a slow, bursty flow has
                   empty 100 ms intervals even without a move: compare the dip with it)
  intervals        intervals counted (the first --skip seconds of slow start and a last
                   interval shorter than 50 ms are left out)
  move_at_s        when the move started, seconds from iperf3's launch (iperf3 stamps its
                   intervals from its own start, a few ms after launch: read as approximate)
  move_exit        MOVE-COMMAND's exit status; move_s its run time
  iperf3_exit      iperf3's exit status: 0, with no iperf3_error line, means the TCP
                   connection survived the move (iperf3 3.12 exits 0 with --json even when
                   its test failed, so the report's "error" is checked too)

Options:
  --ns NAMESPACE    network namespace to run the client in (must exist; `ip netns list`)
  --target IPV4     the iperf3 server's address
  --time S          iperf3 -t, whole seconds (default 10)
  --lead S          seconds of iperf3 before the move starts (default 3)
  --skip S          seconds at the start left out of the dip (default 0.5)
  --port N          iperf3 -p (default 5201)
  --reverse         iperf3 -R: the server (the guest) sends
  --json FILE       keep iperf3's JSON report in FILE
  -h, --help        this text

Exit status: 0 when the move exited 0 and iperf3 ran to the end without error; 1 when either
failed (the figures
are printed if iperf3 produced a report); 2 on bad usage. Needs root (ip netns exec).
EOF
}

die() {
    echo "downtime-iperf.sh: $*" >&2
    exit 2
}

is_number() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }

ns="" target="" secs=10 lead=3 skip=0.5 port=5201 reverse="" keep_json=""
while [[ $# -gt 0 ]]; do
    case $1 in
    -h | --help) usage; exit 0 ;;
    --reverse) reverse=-R; shift ;;
    --ns | --target | --time | --lead | --skip | --port | --json)
        [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
        case $1 in
        --ns) ns=$2 ;;
        --target) target=$2 ;;
        --time) secs=$2 ;;
        --lead) lead=$2 ;;
        --skip) skip=$2 ;;
        --port) port=$2 ;;
        --json) keep_json=$2 ;;
        esac
        shift 2
        ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $ns ]] || die "--ns is required (see --help)"
[[ -n $target ]] || die "--target is required (see --help)"
[[ $# -gt 0 ]] || die "no move command after '--' (see --help)"
[[ $target =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "--target '$target' is not an IPv4 address"
# iperf3 3.12 spins forever on a fractional -t: whole seconds only.
[[ $secs =~ ^[0-9]+$ && $secs -ge 1 ]] || die "--time '$secs' must be a whole number of seconds >= 1"
[[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] || die "--port '$port' is not a TCP port"
for pair in "lead:$lead" "skip:$skip"; do
    is_number "${pair#*:}" || die "--${pair%%:*} '${pair#*:}' is not a number of seconds"
done
awk -v l="$lead" -v t="$secs" 'BEGIN { exit !(l < t) }' ||
    die "--lead ($lead s) must be shorter than --time ($secs s): the move must happen during the test"
[[ $(id -u) -eq 0 ]] || die "needs root (ip netns exec)"
command -v iperf3 >/dev/null || die "iperf3 not found (Debian: apt-get install iperf3)"
ip netns exec "$ns" true 2>/dev/null || die "network namespace '$ns' does not exist"

report=$(mktemp /tmp/downtime-iperf.XXXXXX)
errors=$(mktemp /tmp/downtime-iperf-err.XXXXXX)
iperf_pid=""
cleanup() {
    if [[ -n $iperf_pid ]] && kill -0 "$iperf_pid" 2>/dev/null; then
        kill "$iperf_pid" 2>/dev/null || true
        wait "$iperf_pid" 2>/dev/null || true
    fi
    if [[ -n $keep_json ]]; then cp "$report" "$keep_json" 2>/dev/null || true; fi
    rm -f "$report" "$errors"
}
trap cleanup EXIT

now() { date +%s.%N; }

launched=$(now)
# A bound past -t, so a wedged connection cannot hang the script.
ip netns exec "$ns" timeout $((secs + 30)) iperf3 -c "$target" -p "$port" -t "$secs" \
    -i 0.1 --json $reverse >"$report" 2>"$errors" &
iperf_pid=$!

sleep "$lead"
move_start=$(now)
set +e
"$@"
move_exit=$?
set -e
move_end=$(now)
set +e
wait "$iperf_pid"
iperf_exit=$?
set -e
iperf_pid=""

if ! grep -q '"intervals"' "$report"; then
    echo "downtime-iperf.sh: iperf3 exited $iperf_exit without a report:" >&2
    cat "$errors" >&2
    grep -o '"error":.*' "$report" >&2 || true
    exit 1
fi

# iperf3 --json is pretty-printed: each interval's "sum" object holds its own start, end and
# bits_per_second on separate lines; "sum_sent"/"sum_received" (the end summary) do not match.
awk -v skip="$skip" -v launched="$launched" -v start="$move_start" -v end="$move_end" \
    -v move_exit="$move_exit" -v iperf_exit="$iperf_exit" '
function num(line) { sub(/^[^:]*:[[:space:]]*/, "", line); sub(/,[[:space:]]*$/, "", line); return line + 0 }
/"intervals":/ { in_intervals = 1 }
in_intervals && /^[[:space:]]*"end":[[:space:]]*\{/ { in_intervals = 0 }
in_intervals && /"sum":[[:space:]]*\{/ { in_sum = 1; s = e = b = ""; next }
in_sum && /"start":/ { s = num($0) }
in_sum && /"end":/ { e = num($0) }
in_sum && /"bits_per_second":/ { b = num($0) }
in_sum && /^[[:space:]]*\}/ {
    in_sum = 0
    if (s != "" && e != "" && b != "" && s >= skip && e - s >= 0.05) {
        n++; start_of[n] = s; mbps[n] = b / 1e6
        bits += b * (e - s); secs += e - s
    }
}
/"error":/ { err = $0 }
END {
    if (n == 0) {
        print "dip_mbps=-"; print "dip_at_s=-"; print "median_mbps=-"; print "mean_mbps=-"
        print "intervals=0"
    } else {
        dip = 1
        for (i = 2; i <= n; i++) if (mbps[i] < mbps[dip]) dip = i
        # Median by insertion sort of a copy (a few hundred values at most).
        for (i = 1; i <= n; i++) sorted[i] = mbps[i]
        for (i = 2; i <= n; i++) {
            v = sorted[i]; j = i - 1
            while (j >= 1 && sorted[j] > v) { sorted[j + 1] = sorted[j]; j-- }
            sorted[j + 1] = v
        }
        med = (n % 2) ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
        printf "dip_mbps=%.2f\ndip_at_s=%.2f\nmedian_mbps=%.2f\n", mbps[dip], start_of[dip], med
        printf "mean_mbps=%.2f\nintervals=%d\n", bits / secs / 1e6, n
    }
    printf "move_at_s=%.2f\nmove_exit=%d\nmove_s=%.3f\niperf3_exit=%d\n", start - launched, move_exit, end - start, iperf_exit
    if (err != "") print "iperf3_error=" err
}' "$report"

if [[ $move_exit -ne 0 ]]; then
    echo "downtime-iperf.sh: the move command exited $move_exit" >&2
    exit 1
fi
if [[ $iperf_exit -ne 0 ]]; then
    echo "downtime-iperf.sh: iperf3 exited $iperf_exit: the connection did not survive" >&2
    cat "$errors" >&2
    exit 1
fi
# iperf3 3.12 exits 0 with --json even when the test failed; its report says so.
if grep -q '"error":' "$report"; then
    echo "downtime-iperf.sh: iperf3 reported an error (see iperf3_error above)" >&2
    exit 1
fi
