#!/usr/bin/env bash
# downtime-ping.sh: the longest silence a move causes, seen by stock `ping -D`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: downtime-ping.sh --ns NAMESPACE --target IPV4 [options] -- MOVE-COMMAND [ARGS...]

Runs stock `ping -D` (iputils) at TARGET from network namespace NAMESPACE, waits until the
target answers, runs MOVE-COMMAND (e.g. a live migration of the guest at TARGET), keeps
pinging a little longer, then prints from ping's own log:

  longest_gap_ms   the longest time between two consecutive echo replies, over the move's
                   window: silences ending from --lead/2 before the move to the end
  gap_ms           that less one interval: the network downtime as docs/measuring.md
                   defines it
  gap_from_s       when the longest gap began, seconds from the move's start (negative:
                   before it)
  lost             requests that got no reply, up to the last one answered
  unanswered_end   requests sent after the last reply (in flight when ping was stopped)
  sent, replies    ping's counts; duplicates are ignored
  move_exit        MOVE-COMMAND's exit status; move_s its run time

Options:
  --ns NAMESPACE    network namespace to ping from (must exist; `ip netns list`)
  --target IPV4     address to ping
  --interval S      seconds between requests (default 0.01; below 0.2 needs root)
  --lead S          pinging before the move starts (default 1)
  --tail S          pinging after the move ends (default 1.5)
  --max S           hard bound on the whole ping run, seconds (default 300)
  --log FILE        keep ping's raw output in FILE
  -h, --help        this text

Exit status: 0 when the move exited 0 and the target answered after it; 1 when the move
failed or the target stayed silent after it (the figures are printed all the same); 2 on
bad usage or when the target never answered before the move. Needs root (ip netns exec).
EOF
}

die() {
    echo "downtime-ping.sh: $*" >&2
    exit 2
}

is_number() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }

ns="" target="" interval=0.01 lead=1 tail=1.5 max=300 keep_log=""
while [[ $# -gt 0 ]]; do
    case $1 in
    -h | --help) usage; exit 0 ;;
    --ns | --target | --interval | --lead | --tail | --max | --log)
        [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
        case $1 in
        --ns) ns=$2 ;;
        --target) target=$2 ;;
        --interval) interval=$2 ;;
        --lead) lead=$2 ;;
        --tail) tail=$2 ;;
        --max) max=$2 ;;
        --log) keep_log=$2 ;;
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
for pair in "interval:$interval" "lead:$lead" "tail:$tail" "max:$max"; do
    is_number "${pair#*:}" || die "--${pair%%:*} '${pair#*:}' is not a number of seconds"
done
awk -v i="$interval" 'BEGIN { exit !(i > 0) }' || die "--interval must be above 0"
[[ $(id -u) -eq 0 ]] || die "needs root (ip netns exec)"
command -v ping >/dev/null || die "ping not found (Debian: apt-get install iputils-ping)"
ip netns exec "$ns" true 2>/dev/null || die "network namespace '$ns' does not exist"

log=$(mktemp /tmp/downtime-ping.XXXXXX)
ping_pid=""
cleanup() {
    if [[ -n $ping_pid ]] && kill -0 "$ping_pid" 2>/dev/null; then
        kill "$ping_pid" 2>/dev/null || true
        wait "$ping_pid" 2>/dev/null || true
    fi
    if [[ -n $keep_log ]]; then cp "$log" "$keep_log" 2>/dev/null || true; fi
    rm -f "$log"
}
trap cleanup EXIT

now() { date +%s.%N; }

# `ip netns exec` execs ping, so $! is ping's own PID.
ip netns exec "$ns" ping -D -n -W 1 -i "$interval" -w "$max" "$target" >"$log" 2>&1 &
ping_pid=$!

# Wait (at most 10 s) for a first reply, so the move starts against a reachable target.
for _ in $(seq 1 1000); do
    grep -q ' bytes from ' "$log" && break
    kill -0 "$ping_pid" 2>/dev/null || break
    sleep 0.01
done
if ! grep -q ' bytes from ' "$log"; then
    echo "downtime-ping.sh: $target did not answer from namespace $ns before the move:" >&2
    tail -n 5 "$log" >&2
    exit 2
fi

sleep "$lead"
move_start=$(now)
set +e
"$@"
move_exit=$?
set -e
move_end=$(now)
sleep "$tail"
kill -INT "$ping_pid" 2>/dev/null || true
wait "$ping_pid" 2>/dev/null || true
ping_pid=""

# ping -D lines: "[1700000000.123456] 64 bytes from IP: icmp_seq=7 ttl=64 time=1.25 ms".
awk -v start="$move_start" -v end="$move_end" -v interval="$interval" \
    -v from="$(awk -v s="$move_start" -v l="$lead" 'BEGIN { printf "%.6f", s - l / 2 }')" \
    -v move_exit="$move_exit" '
function field(key,   i) {
    for (i = 1; i <= NF; i++) if (index($i, key) == 1) return substr($i, length(key) + 1)
    return ""
}
/ packets transmitted/ { sent = $1; next }
/^\[[0-9]+(\.[0-9]+)?\] .* bytes from / {
    if ($0 ~ /\(DUP!\)/) next
    at = substr($1, 2, length($1) - 2) + 0
    raw = field("icmp_seq=") + 0
    # Unwrap the 16-bit sequence number around the highest seen so far.
    seq = raw + base
    if (seq < top - 32768) { base += 65536; seq += 65536 }
    if (seq in seen) next
    seen[seq] = 1
    replies++
    if (seq > top) top = seq
    # Only silences ending inside the move window count, not those of ping starting up.
    if (replies > 1 && at > from && at - last > gap) { gap = at - last; gap_from = last }
    last = at
}
END {
    lost = 0
    for (s = 1; s <= top; s++) if (!(s in seen)) lost++
    gap_ms = gap * 1000
    net = gap_ms - interval * 1000
    if (net < 0) net = 0
    printf "longest_gap_ms=%.1f\n", gap_ms
    printf "gap_ms=%.1f\n", net
    if (replies > 1) printf "gap_from_s=%.3f\n", gap_from - start
    else print "gap_from_s=-"
    printf "lost=%d\n", lost
    printf "unanswered_end=%d\n", (sent > top ? sent - top : 0)
    printf "sent=%d\nreplies=%d\n", sent, replies
    printf "move_exit=%d\nmove_s=%.3f\n", move_exit, end - start
    # The target must have answered after the move ended.
    exit !(replies > 0 && last > end)
}' "$log" || {
    echo "downtime-ping.sh: $target did not answer after the move" >&2
    exit 1
}
if [[ $move_exit -ne 0 ]]; then
    echo "downtime-ping.sh: the move command exited $move_exit" >&2
    exit 1
fi
