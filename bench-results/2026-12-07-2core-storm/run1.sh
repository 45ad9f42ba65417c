#!/bin/bash
# usage: run1.sh BIN "serve args" [client args]
BIN=$1; SARGS=$2; shift 2
PORT=$((20000 + RANDOM % 20000))
$BIN serve --listen 127.0.0.1:$PORT $SARGS > /tmp/serve.$PORT.log 2>&1 &
SP=$!
sleep 0.5
DEST=/dev/shm/r.$PORT
AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  $BIN --endpoint-url http://127.0.0.1:$PORT --progress-interval 0 "$@" s3://bench/ $DEST 2>&1 | grep -v '^stage\|^list \|^queue\|^ttfb\|^body\|^handoff\|^write\|^total'
kill -INT $SP; wait $SP 2>/dev/null
grep -E 'served|in-flight|rate limit' /tmp/serve.$PORT.log | cut -c1-200
rm -rf $DEST /tmp/serve.$PORT.log
