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
echo "scenario,build,rep,secs,objects_per_s,cpu_us_per_object,gets_503"
for rep in $(seq 1 $REPS); do
  for sc in "${SCENARIOS[@]}"; do
    name=${sc%%|*}; args=${sc#*|}
    objects=$(echo "$args" | grep -oP -- '--objects \K[0-9]+')
    # the order of the two builds alternates per rep
    if [ $((rep % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for b in $order; do
      if [ $b = old ]; then BIN=$OLD; else BIN=$NEW; fi
      out=$(../2026-12-07-2core-faults/run1.sh $BIN "$args" 2>&1)
      secs=$(echo "$out" | grep -oP 'in \K[0-9.]+(?= s:)' | head -1)
      ops=$(echo "$out" | grep -oP '[0-9]+(?= objects/s)' | head -1)
      cpu=$(echo "$out" | grep -oP '= \K[0-9]+(?= µs/object)' | head -1)
      served=$(echo "$out" | grep -oP '^served \K[0-9]+(?= GETs)' | head -1)
      echo "$name,$b,$rep,$secs,$ops,$cpu,$((served - objects))"
    done
  done
done
