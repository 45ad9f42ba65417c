#!/bin/bash
# Interleaved A/B: old vs new binary, each scenario, N reps; prints one CSV row per run.
OLD=$1; NEW=$2; REPS=$3
echo "scenario,build,rep,secs,objects_per_s,cpu_us_per_object"
for rep in $(seq 1 $REPS); do
  for sc in "0|--objects 20000 --latency-ms 0" "10|--objects 20000 --latency-ms 10" "10+random1|--objects 20000 --latency-ms 10 --fail-slowdown 0.01" "10+random5|--objects 20000 --latency-ms 10 --fail-slowdown 0.05"; do
    name=${sc%%|*}; args=${sc#*|}
    # the order of the two builds alternates per rep
    if [ $((rep % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for b in $order; do
      if [ $b = old ] && [ $name = 10+random5 ]; then continue; fi
      if [ $b = old ]; then BIN=$OLD; else BIN=$NEW; fi
      out=$(/tmp/run1.sh $BIN "$args" 2>&1)
      secs=$(echo "$out" | grep -oP 'in \K[0-9.]+(?= s:)' | head -1)
      ops=$(echo "$out" | grep -oP '[0-9]+(?= objects/s)' | head -1)
      cpu=$(echo "$out" | grep -oP '= \K[0-9]+(?= µs/object)' | head -1)
      echo "$name,$b,$rep,$secs,$ops,$cpu"
    done
  done
done
