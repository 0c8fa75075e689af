# `mlflow_server: true`: the workflow starts `mlflow server` for as long as it runs and points
# every job at it (MLFLOW_TRACKING_URI, which local jobs inherit and sbatch exports to Slurm jobs).
#
# Why: jobs that log straight into the local SQLite store take turns on a file lock, and on a
# cluster that lock needs a shared file system that honours it. With a server, jobs log over
# HTTP and only the server writes the database. It serves the store the jobs would use anyway
# (MLflow's local default, ./mlflow.db; artifacts in ./mlartifacts), so `mlflow ui` shows the same
# runs afterwards. A tracking server that runs elsewhere needs none of this: export
# MLFLOW_TRACKING_URI=http://host:port before `snakemake` (docs/cluster.md).

import atexit
import os
import subprocess
import sys
import time
import urllib.request


def _mlflow_answers(uri, timeout=2.0):
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _backend_store():
    """The store the jobs would log to without a server: $MLFLOW_TRACKING_URI or ./mlflow.db."""
    import mlflow

    uri = mlflow.get_tracking_uri()  # resolves MLflow's default to an absolute sqlite:/// path
    if uri.startswith(("http://", "https://", "databricks")):
        raise WorkflowError(f"mlflow_server: MLFLOW_TRACKING_URI already names a server ({uri}); "
                            f"unset it or set mlflow_server: false")
    return uri


def _stop_mlflow_server(server):
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def start_mlflow_server():
    host, port = config["mlflow_server_host"], config["mlflow_server_port"]
    uri = f"http://{host}:{port}"
    if _mlflow_answers(uri):
        raise WorkflowError(f"mlflow_server: something already answers at {uri}; choose a free "
                            f"mlflow_server_port, or export MLFLOW_TRACKING_URI={uri} to log there")
    backend = _backend_store()
    log_path = Path("logs/mlflow-server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        # One worker: the only writer of the SQLite file. The server stays in Snakemake's process
        # group, so whatever stops Snakemake from the terminal stops the server too.
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
             "--workers", "1", "--backend-store-uri", backend,
             "--artifacts-destination", str(Path("mlartifacts").resolve()),
             "--allowed-hosts", f"{host},{host}:{port},localhost:*,127.0.0.1:*"],
            stdout=log, stderr=subprocess.STDOUT)
    atexit.register(_stop_mlflow_server, server)
    deadline = time.monotonic() + 120
    while not _mlflow_answers(uri):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop_mlflow_server(server)
            tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
            raise WorkflowError(f"mlflow_server: `mlflow server` did not start at {uri} "
                                f"({tail[0]}); see {log_path}")
        time.sleep(0.5)
    # Set here, for the jobs to inherit: `snakemake --lint` asks to assert it with `envvars`,
    # which is for variables a workflow reads and requires (this one is optional, and written).
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"mlflow server at {uri} (store {backend}, log {log_path}); jobs log there", file=sys.stderr)


# onstart runs in the main Snakemake process only, and not for dry runs or when nothing is to do.
onstart:
    if config["mlflow"] and config["mlflow_server"]:
        start_mlflow_server()
