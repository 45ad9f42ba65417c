#!/bin/bash
# Interleaved A/B: old vs new binary, each scenario, N reps; one CSV row per run.
# ab.sh OLD NEW REPS [fault-free], run from this directory: with "fault-free", only the 0 ms and
# 10 ms runs.
OLD=$1; NEW=$2; REPS=$3; ONLY=$4
SCENARIOS=("0|--objects 20000 --latency-ms 0" "10|--objects 20000 --latency-ms 10")
if [ "$ONLY" != fault-free ]; then
  SCENARIOS+=("10+random1|--objects 20000 --latency-ms 10 --fail-slowdown 0.01" "10+random5|--objects 20000 --latency-ms 10 --fail-slowdown 0.05")
fi
echo "scenario,build,rep,secs,objects_per_s,cpu_us_per_object"
for rep in $(seq 1 $REPS); do
  for sc in "${SCENARIOS[@]}"; do
    name=${sc%%|*}; args=${sc#*|}
    # the order of the two builds alternates per rep
    if [ $((rep % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for b in $order; do
      # before the change, 5 % random 503s take minutes: not run
      if [ $b = old ] && [ $name = 10+random5 ]; then continue; fi
      if [ $b = old ]; then BIN=$OLD; else BIN=$NEW; fi
      out=$(./run1.sh $BIN "$args" 2>&1)
      secs=$(echo "$out" | grep -oP 'in \K[0-9.]+(?= s:)' | head -1)
      ops=$(echo "$out" | grep -oP '[0-9]+(?= objects/s)' | head -1)
      cpu=$(echo "$out" | grep -oP '= \K[0-9]+(?= µs/object)' | head -1)
      echo "$name,$b,$rep,$secs,$ops,$cpu"
    done
  done
done
