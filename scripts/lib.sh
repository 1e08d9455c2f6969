# Shared by scripts/demo and scripts/bench: start the daemons
# on free loopback ports and always stop them.
# shellcheck shell=bash

BIN=${BIN:-bin}
PIDS=()

stop_all() {
	local p
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}

# start NAME LOGDIR CMD... — runs CMD in the background and waits for its
# "listening on HOST:PORT" line; sets ADDR to HOST:PORT.
start() {
	local name=$1 dir=$2
	shift 2
	# The old file goes first: the redirect below truncates it only once the
	# background job runs, and the loop could read a dead process's address.
	rm -f "$dir/$name.out"
	"$@" >"$dir/$name.out" 2>"$dir/$name.log" &
	PIDS+=($!)
	local i
	for i in $(seq 1 100); do
		ADDR=$(sed -n 's/^listening on //p' "$dir/$name.out" 2>/dev/null | head -1)
		[ -n "$ADDR" ] && return 0
		kill -0 "${PIDS[-1]}" 2>/dev/null || break
		sleep 0.1
	done
	echo "$name did not start; its log:" >&2
	cat "$dir/$name.log" >&2
	return 1
}
