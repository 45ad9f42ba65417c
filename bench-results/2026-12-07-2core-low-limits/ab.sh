#!/bin/bash
# Interleaved A/B: old vs new binary, each scenario, REPS reps; one CSV row per run.
# ab.sh OLD NEW REPS, run from this directory. 503s: GETs the endpoint served beyond the
# objects of the scenario.
OLD=$1; NEW=$2; REPS=$3
SCENARIOS=(
  "L100|--objects 2000 --latency-ms 10 --rate-limit 100"
  "L300|--objects 6000 --latency-ms 10 --rate-limit 300"
  "L1500+d100|--objects 20000 --latency-ms 10 --rate-limit 1500 --rate-limit-burst-ms 100"
  "L5500+d100|--objects 20000 --latency-ms 10 --rate-limit 5500 --rate-limit-burst-ms 100"
  "cap128|--objects 20000 --latency-ms 10 --max-inflight 128"
  "10+random1|--objects 20000 --latency-ms 10 --fail-slowdown 0.01"
)
source ../2026-12-07-2core-faults/ab-loop.sh
