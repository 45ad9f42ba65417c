#!/bin/bash
# The caps, and a cap on a limit: ab-served.sh OLD NEW REPS, run from this directory.
OLD=$1; NEW=$2; REPS=$3
SCENARIOS=(
  "cap128|--objects 20000 --latency-ms 10 --max-inflight 128"
  "cap32|--objects 5000 --latency-ms 10 --max-inflight 32"
  "L5500+cap128|--objects 20000 --latency-ms 10 --rate-limit 5500 --max-inflight 128"
)
source ../2026-12-07-2core-faults/ab-loop.sh
