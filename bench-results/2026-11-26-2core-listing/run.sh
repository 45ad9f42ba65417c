#!/bin/bash
# Listing time for 1,000,000 keys at 30 ms per ListObjectsV2 page, sequential vs parallel
#. Listing only: `--dry-run` lists (with the selection) and prints one line per
# key, no GET, no write. Two layouts from `s3uring serve`: 100 prefixes (p0000/ … p0099/,
# 10,000 keys each) and 1 prefix (all 1,000,000 keys flat under p0000/).
# Usage: bench-results/2026-11-26-2core-listing/run.sh [REPEAT]
set -euo pipefail
BIN=${BIN:-target/release/s3uring}
REPEAT=${1:-2}
export AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
for prefixes in 100 1; do
  port=$((9600 + prefixes))
  $BIN serve --listen 127.0.0.1:$port --bucket list --objects 1000000 --size 100 --prefixes $prefixes --list-latency-ms 30 >/dev/null &
  srv=$!
  sleep 3
  for rep in $(seq "$REPEAT"); do
    for lw in 1 8 32 64; do
      start=$(date +%s.%N)
      $BIN --endpoint-url http://127.0.0.1:$port --dry-run --list-workers $lw --stats-json /tmp/list-$lw.json s3://list /tmp/nonexistent-dest >/dev/null 2>/tmp/list-$lw.err
      end=$(date +%s.%N)
      python3 - "$prefixes" "$lw" "$rep" "$start" "$end" <<'PY'
import json, sys
prefixes, lw, rep, start, end = sys.argv[1:]
d = json.load(open(f"/tmp/list-{lw}.json"))
print(f"{prefixes},{lw},{rep},{float(end)-float(start):.2f},{d['counters']['dry_run_planned']},{d['stages']['list']['count']},{d['cpu']['user_s']+d['cpu']['sys_s']:.2f},{d['cpu']['peak_rss_bytes']//2**20}")
PY
    done
  done
  kill -INT $srv; wait $srv 2>/dev/null || true
done
