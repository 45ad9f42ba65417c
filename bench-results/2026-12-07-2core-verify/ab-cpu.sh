#!/bin/bash
# Client CPU (perf stat task-clock) of one binary with checking on (the default) and off
# (--no-verify), N pairs, order alternating, each run into a fresh tmpfs tree.
# usage: ab-cpu.sh BIN [PAIRS] [OBJECTS]
BIN=$1; N=${2:-10}; OBJECTS=${3:-20000}
PORT=$((20000 + RANDOM % 20000))
$BIN serve --listen 127.0.0.1:$PORT --objects $OBJECTS --size 4096 > /tmp/serve.$PORT.log 2>&1 &
SP=$!; sleep 0.7
export AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
for i in $(seq 1 $N); do
  if [ $((i % 2)) = 0 ]; then order="on off"; else order="off on"; fi
  for mode in $order; do
    flag=""; [ $mode = off ] && flag=--no-verify
    perf stat -x, -e task-clock $BIN -q --io-engine threads --endpoint-url http://127.0.0.1:$PORT $flag \
      s3://bench/ /dev/shm/ab-cpu-$mode-$i 2>&1 | awk -F, -v m=$mode -v i=$i '{printf "%s,%s,%s\n", i, m, $1}'
    rm -rf /dev/shm/ab-cpu-$mode-$i
  done
done
kill -INT $SP; wait $SP 2>/dev/null; rm -f /tmp/serve.$PORT.log
