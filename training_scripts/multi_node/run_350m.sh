#!/usr/bin/env bash
# The card's run across nodes with DeepSpeed's launcher (pdsh over ssh).
# Usage: bash training_scripts/multi_node/run_350m.sh [OUTPUT] [ZERO_STAGE] [HOSTFILE] [main.py flags...]
#   HOSTFILE (or env HOSTFILE): lines "host slots=N" (see hostfile.example).
#   MASTER_ADDR (default: the first host) and MASTER_PORT (default 29500) choose the rendezvous.
#   Flags after HOSTFILE go to main.py after the card's, so they override them (the last one wins).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUTPUT="${1:-./output}"
ZERO_STAGE="${2:-}"
HOSTFILE="${3:-${HOSTFILE:-/job/hostfile}}"
[ -r "$HOSTFILE" ] || { echo "error: hostfile $HOSTFILE not readable: pass it as the third argument or HOSTFILE=..." >&2; exit 1; }
line_number=0
FIRST_HOST=""
declare -A HOST_LINE
while IFS= read -r line || [ -n "$line" ]; do
  line_number=$((line_number + 1))
  stripped="${line%%#*}"
  [[ "$stripped" =~ ^[[:space:]]*$ ]] && continue
  if ! [[ "$stripped" =~ ^[[:space:]]*[A-Za-z0-9._-]+[[:space:]]+slots=[1-9][0-9]*[[:space:]]*$ ]]; then
    echo "error: $HOSTFILE line $line_number: '$line' is not 'HOSTNAME slots=N'" >&2
    exit 1
  fi
  read -r host _ <<< "$stripped"
  if [ -n "${HOST_LINE[$host]:-}" ]; then
    echo "error: $HOSTFILE line $line_number: host $host is already listed on line ${HOST_LINE[$host]}" >&2
    exit 1
  fi
  HOST_LINE[$host]=$line_number
  FIRST_HOST="${FIRST_HOST:-$host}"
done < "$HOSTFILE"
[ -n "$FIRST_HOST" ] || { echo "error: $HOSTFILE lists no host" >&2; exit 1; }
source "$ROOT/training_scripts/card_args.sh"
mkdir -p "$OUTPUT"
set -o pipefail
deepspeed --hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:-$FIRST_HOST}" --master_port "${MASTER_PORT:-29500}" \
  "$ROOT/main.py" "${CARD_ARGS[@]}" "${@:4}" 2>&1 | tee "$OUTPUT/training.log"
