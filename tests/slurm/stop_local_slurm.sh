#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start_local_slurm.sh started (and only those).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # STATE, alive
stop_pidfile() {  # stop one daemon by the pid it recorded, and wait until it is gone
    local pidfile=$1 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
    echo "stop_local_slurm: pid $pid ($pidfile) did not stop" >&2
}

[ -e "$STATE/slurmd" ] && stop_pidfile /run/slurmd.pid && rm -f "$STATE/slurmd"
[ -e "$STATE/slurmctld" ] && stop_pidfile /run/slurmctld.pid && rm -f "$STATE/slurmctld"
[ -e "$STATE/munged" ] && stop_pidfile /run/munge/munged.pid && rm -f "$STATE/munged"
exit 0
