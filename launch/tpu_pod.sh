#!/usr/bin/env bash
# Run vkd_jax on every worker of a TPU VM pod slice (one JAX process per host; JAX finds its peers itself).
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --config configs/llava7b.py --workdir gs://BUCKET/run \
#       [--project P] [--accelerator v4-32] [--create] [--dry_run] [-- extra flags for vkd_jax.main]
#
# Steps: (optionally) create the slice; copy this checkout to all workers; create a virtualenv with the TPU extra on
# each; run `python -m vkd_jax.main` on all workers at once. With --dry_run every command is printed, none is run.
# SIGTERM or SIGINT to this script is passed on as SIGTERM to vkd_jax.main on every worker: they save the training
# step in flight together and exit 143; run the script again to resume. (A maintenance event or a spot preemption
# sends SIGTERM on the workers themselves.)
set -euo pipefail

TPU="" ZONE="" PROJECT="" ACCEL="v4-32" CONFIG="" WORKDIR="" CREATE=0 DRY_RUN=0
RUNTIME="tpu-ubuntu2204-base"
EXTRA=()

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --create) CREATE=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" && -n "$CONFIG" && -n "$WORKDIR" ]] || { echo "tpu_pod.sh: --tpu, --zone, --config and --workdir are required" >&2; usage; }

GCLOUD=(gcloud compute tpus tpu-vm)
PROJECT_FLAG=()
[[ -n "$PROJECT" ]] && PROJECT_FLAG=(--project "$PROJECT")
REMOTE_DIR="vkd_jax"
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [[ "$CREATE" == 1 ]]; then
  run "${GCLOUD[@]}" create "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --accelerator-type "$ACCEL" --version "$RUNTIME"
fi

# Copy the checkout (without virtualenvs or work directories) to every worker.
ARCHIVE="/tmp/vkd_jax_src.tar.gz"
run tar -C "$REPO_ROOT" --exclude=.venv --exclude=workdir --exclude=.git -czf "$ARCHIVE" .
run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU:/tmp/" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
SETUP="mkdir -p $REMOTE_DIR && tar -xzf /tmp/vkd_jax_src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu,gcs]'"
run "${GCLOUD[@]}" ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$SETUP"

# One process per host; jax.distributed picks up the pod topology from the TPU environment. `exec`: the signal
# reaches python itself, not a shell in between.
MAIN="cd $REMOTE_DIR && exec .venv/bin/python -m vkd_jax.main --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
for arg in "${EXTRA[@]}"; do MAIN+=" $(printf '%q' "$arg")"; done
STOP="pkill -TERM -f '[v]kd_jax[.]main --config' || true"
if [[ "$DRY_RUN" == 1 ]]; then
  run "${GCLOUD[@]}" ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$MAIN"
  echo "# on SIGTERM/SIGINT:"
  run "${GCLOUD[@]}" ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$STOP"
  exit 0
fi
# shellcheck disable=SC2329  # invoked by the trap
forward() {
  echo "tpu_pod.sh: passing SIGTERM on to vkd_jax.main on every worker (it saves the step in flight)" >&2
  "${GCLOUD[@]}" ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$STOP"
}
trap forward TERM INT
"${GCLOUD[@]}" ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$MAIN" &
pid=$!
rc=0
wait "$pid" || rc=$?
while kill -0 "$pid" 2>/dev/null; do  # a trapped signal interrupts `wait`: keep waiting for the workers' exit
  rc=0
  wait "$pid" || rc=$?
done
exit "$rc"
