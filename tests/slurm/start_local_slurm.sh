#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine, for the workflow's Slurm integration test.
#
#   sudo tests/slurm/start_local_slurm.sh     # needs Debian's slurm-wlm and munge
#   tests/slurm/stop_local_slurm.sh           # stops only what this script started
#
# Idempotent: a cluster it already started is reused. It writes /etc/slurm/slurm.conf (jobs'
# srun reads only that path), sized from `slurmd -C` (this machine's real CPUs and memory),
# with no accounting daemon: MinJobAge=300 keeps finished jobs visible to squeue for 5 minutes,
# which the Snakemake executor's `--slurm-status-command squeue` needs. The daemons it starts
# begin with empty state (`slurmctld -c`), in spool folders of their own: a cluster killed
# mid-job (a machine restored from a snapshot, a CI runner stopped) would otherwise recover its
# dead jobs as still running on the node, and a new job would wait for CPUs that never free up.
# It exits non-zero with one line saying why if Slurm cannot start here; it never overwrites a
# slurm.conf it did not write.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# written by mnistbench tests/slurm/start_local_slurm.sh"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # STATE, alive
LOGS=/var/log/slurm
PARTITION=${MNISTBENCH_SLURM_PARTITION:-debug}

fail() { echo "start_local_slurm: $*" >&2; exit 1; }

for tool in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch squeue; do
    command -v "$tool" >/dev/null || fail "'$tool' not found: apt-get install slurm-wlm munge"
done
if [ "$(id -u)" -ne 0 ]; then  # others can use a cluster that is up, but not start one
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "Slurm is already up: $(sinfo -h -o '%P %N %T' | head -1)"; exit 0
    fi
    fail "must run as root to start munged, slurmctld and slurmd (no running cluster found)"
fi
SPOOL=/var/spool/mnistbench-slurm  # this test cluster's state, apart from a real cluster's
mkdir -p "$STATE" "$LOGS" "$SPOOL/slurmctld" "$SPOOL/slurmd" /run/munge /var/lib/munge /var/log/munge

# --- munge: the authentication every Slurm daemon and command uses ---------------------------
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # --force: run although (as root in a container) the key's owner and folders look unusual
    munged --force 2>"$STATE/munged.err" || fail "munged did not start: $(tail -1 "$STATE/munged.err")"
    touch "$STATE/munged"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work after starting munged"
fi

# --- slurm.conf for one node: this machine ---------------------------------------------------
node=$(hostname -s)
hardware=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //')  # CPUs=.. Boards=.. RealMemory=..
[ -n "$hardware" ] || fail "'slurmd -C' did not report this machine's CPUs and memory"
gres=""
if command -v nvidia-smi >/dev/null && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "${gpus:-0}" -gt 0 ]; then
    gres="Gres=gpu:$gpus"  # lets `--gpus=1` jobs (the GPU profile) run on a GPU machine
fi
desired=$(cat <<EOF
$MARKER
ClusterName=mnistbench
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# Containers often lack a usable cgroup hierarchy: track processes without cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
${gres:+GresTypes=gpu}
# No slurmdbd: sacct cannot report jobs, so status comes from squeue, which must still show
# finished jobs when Snakemake polls (every 40 s or more).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 $hardware $gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching a real cluster's config"
fi
changed=no
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$desired" ]; then
    printf '%s\n' "$desired" > "$CONF"
    changed=yes
fi
if [ -n "$gres" ]; then
    printf '%s\nAutoDetect=off\nNodeName=%s Name=gpu File=/dev/nvidia[0-%d]\n' \
        "$MARKER" "$node" "$((gpus - 1))" > /etc/slurm/gres.conf
fi

# --- the daemons -----------------------------------------------------------------------------
running() { [ -s "$1" ] && alive "$(cat "$1")"; }
if [ "$changed" = yes ] && running /run/slurmctld.pid; then
    scontrol reconfigure || true  # a cluster of ours from an earlier configuration
fi
if ! running /run/slurmctld.pid; then
    # -c: forget jobs and node states saved by an earlier cluster of ours that did not stop cleanly
    slurmctld -c || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
    touch "$STATE/slurmctld"
fi
if ! running /run/slurmd.pid; then
    rm -rf "${SPOOL:?}/slurmd/"*  # job steps and credentials of a slurmd that did not stop cleanly
    slurmd -c || fail "slurmd did not start (see $LOGS/slurmd.log)"
    touch "$STATE/slurmd"
fi

# --- wait until the node takes jobs ----------------------------------------------------------
state=""
for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
case "$state" in
    idle|mixed|allocated) ;;
    *) fail "node $node is '${state:-not reported}' after 60 s (see $LOGS/slurmctld.log and $LOGS/slurmd.log)" ;;
esac
# A real job end to end: submission, munge credentials, srun inside the allocation.
if ! out=$(timeout 120 srun -N1 -n1 -t 1 hostname 2>&1); then
    queue=$(squeue -h -o '%i %T %r' 2>/dev/null | tr '\n' ';')
    fail "a test job did not run: $(echo "$out" | tail -1) (queue: ${queue:-empty}; see $LOGS/slurmctld.log)"
fi
echo "Slurm is up: node $node ($hardware), partition $PARTITION, $(sinfo --version)"
