# Sourced by an A/B script that sets OLD, NEW, REPS and SCENARIOS ("name|serve args"), run
# from its own directory: each scenario REPS times, the two builds' order alternating per
# rep; one CSV row per run. 503s: GETs the endpoint served beyond the scenario's objects.
echo "scenario,build,rep,secs,objects_per_s,cpu_us_per_object,gets_503"
for rep in $(seq 1 $REPS); do
  for sc in "${SCENARIOS[@]}"; do
    name=${sc%%|*}; args=${sc#*|}
    objects=$(echo "$args" | grep -oP -- '--objects \K[0-9]+')
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
