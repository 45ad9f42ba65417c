#!/bin/bash
# Peak RSS of a real restore of 10,000 vs 1,000,000 small objects.
# DEST on tmpfs; default flags; RSS from --stats-json (VmHWM) and GNU time.
set -euo pipefail
BIN=${BIN:-target/release/s3uring}
export AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
echo "objects,seconds,objects_per_s,peak_rss_mib,time_maxrss_mib,written"
for n in ${SIZES:-10000 1000000 10000 1000000}; do
  $BIN serve --listen 127.0.0.1:9700 --bucket mem --objects $n --size 64 --prefixes 100 >/dev/null &
  srv=$!
  sleep 2
  dest=/dev/shm/s3uring-mem-$n
  rm -rf $dest
  /usr/bin/time -f "%M" -o /tmp/mem-time.txt $BIN -q --endpoint-url http://127.0.0.1:9700 --stats-json /tmp/mem.json s3://mem $dest
  python3 - "$n" <<'PY'
import json, sys
d = json.load(open("/tmp/mem.json")); n = sys.argv[1]
t = int(open("/tmp/mem-time.txt").read().split()[-1]) // 1024
print(f"{n},{d['elapsed_s']:.1f},{d['throughput']['objects_per_s']:.0f},{d['cpu']['peak_rss_bytes']//2**20},{t},{d['counters']['written']}")
PY
  kill -INT $srv; wait $srv 2>/dev/null || true
  rm -rf $dest
done
