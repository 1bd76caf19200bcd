#!/bin/bash
# One sweep, one Slurm array task per point, all against one tracking server and one shared workdir.
#
#   sbatch --array=0-5 examples/slurm_sweep.sh sweep_quickstart http://mlflow-host:5000 /shared/runs/sweep
#
# `ispdc validate SWEEP` prints the points (0..N-1): size --array to them.  Every task runs its own point
# (`--point $SLURM_ARRAY_TASK_ID`) and they all meet in one MLflow parent run (found or created under a lock
# in WORKDIR/sweeps/).  Finished points are skipped, so re-submitting the whole array after a failure or a
# preemption re-runs only what is missing; a task killed mid-stage (scancel, node failure, kill -9) resumes
# from its stage checkpoint when its point runs again.  Stages shared by points (the teacher, a student
# width) are made once: a task that needs one another task is making prints one line and waits for it.
# The task that finishes the last point writes the trade-off table and Pareto plots to WORKDIR/compare/ and
# logs them on the parent run; `ispdc compare --tracking-uri URI --parent RUN_ID` gathers them at any time.
#
# WORKDIR must be on a file system every node sees, with working flock (NFSv4, Lustre, GPFS, BeeGFS): the
# stage cache and the locks live there.  Start the server once (scripts/mlflow_server.sh start) where the
# nodes can reach it, e.g. through an SSH tunnel; --tracking-uri may also be any database MLflow supports.
#SBATCH --job-name=ispdc-sweep
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=ispdc-sweep-%A_%a.log
set -euo pipefail

SWEEP=${1:?usage: sbatch --array=0-N examples/slurm_sweep.sh SWEEP TRACKING_URI WORKDIR}
TRACKING_URI=${2:?tracking server URI, e.g. http://mlflow-host:5000}
WORKDIR=${3:?shared work folder}
ISPDC=${ISPDC:-.venv/bin/ispdc}

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-4}
# Slurm logs are files: progress is one line every 30 s (ISPDC_PROGRESS_SECONDS), not bar redraws.
exec "$ISPDC" run "$SWEEP" --point "${SLURM_ARRAY_TASK_ID:?run this under sbatch --array}" \
    --tracking-uri "$TRACKING_URI" --workdir "$WORKDIR"
