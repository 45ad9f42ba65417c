#!/bin/bash
# Client CPU (perf stat task-clock) of two builds, PAIRS pairs, order alternating, each run
# into a fresh tmpfs tree; prints IO,PAIR,a|b,MS.
# usage: ab-bin.sh BIN_A BIN_B IO PAIRS
A=$1; B=$2; IO=$3; N=$4
PORT=$((20000 + RANDOM % 20000))
$A serve --listen 127.0.0.1:$PORT --objects 20000 --size 4096 > /tmp/serve.$PORT.log 2>&1 &
SP=$!; sleep 0.7
export AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
for i in $(seq 1 $N); do
  if [ $((i % 2)) = 0 ]; then order="a b"; else order="b a"; fi
  for w in $order; do
    bin=$A; [ $w = b ] && bin=$B
    perf stat -x, -e task-clock $bin -q --io-engine $IO --endpoint-url http://127.0.0.1:$PORT s3://bench/ /dev/shm/ab-$w-$i 2>&1 | awk -F, -v w=$w -v i=$i -v io=$IO '{printf "%s,%s,%s,%s\n", io, i, w, $1}'
    rm -rf /dev/shm/ab-$w-$i
  done
done
kill -INT $SP; wait $SP 2>/dev/null
