#!/bin/bash
# The cap scenarios alone, more reps: ab-cap.sh OLD NEW REPS, run from this directory.
OLD=$1; NEW=$2; REPS=$3
SCENARIOS=(
  "cap128|--objects 20000 --latency-ms 10 --max-inflight 128"
  "cap32|--objects 5000 --latency-ms 10 --max-inflight 32"
)
source ../2026-12-07-2core-faults/ab-loop.sh
