#!/bin/bash
# Interleaved A/B: old vs new binary, each scenario, REPS reps; one CSV row per run.
# ab.sh OLD NEW REPS, run from this directory. 503s: GETs the endpoint served beyond the 20,000.
OLD=$1; NEW=$2; REPS=$3
SCENARIOS=(
  "0|--objects 20000 --latency-ms 0"
  "10|--objects 20000 --latency-ms 10"
  "10+random1|--objects 20000 --latency-ms 10 --fail-slowdown 0.01"
  "10+random5|--objects 20000 --latency-ms 10 --fail-slowdown 0.05"
  "L1500+d1000|--objects 20000 --latency-ms 10 --rate-limit 1500 --rate-limit-burst-ms 1000"
  "L5500+d100|--objects 20000 --latency-ms 10 --rate-limit 5500 --rate-limit-burst-ms 100"
  "L5500+d20|--objects 20000 --latency-ms 10 --rate-limit 5500 --rate-limit-burst-ms 20"
  "cap128|--objects 20000 --latency-ms 10 --max-inflight 128"
  "L5500+cap128|--objects 20000 --latency-ms 10 --rate-limit 5500 --max-inflight 128"
)
source ../2026-12-07-2core-faults/ab-loop.sh
