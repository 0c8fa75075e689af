# Shared by start_local_slurm.sh and stop_local_slurm.sh (sourced, not run).

STATE=/run/mnistbench-slurm  # marker files: which daemons start_local_slurm.sh started

# A pid is a live process: a killed daemon nobody reaped (a zombie, common in containers whose
# init does not reap) still answers kill -0, so read its state instead.
alive() { [ -n "$(awk '$1 == "State:" && $2 != "Z"' "/proc/$1/status" 2>/dev/null)" ]; }
