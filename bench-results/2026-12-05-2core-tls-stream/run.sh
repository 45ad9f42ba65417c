#!/bin/bash
# run.sh SCHEME DEST [flags]: client pinned to core 0 against the endpoints on :9080 / :9443
scheme=$1; dest=$2; shift 2
if [ "$scheme" = https ]; then url=https://127.0.0.1:9443; extra="--ca-bundle /tmp/prof/ca.pem"; else url=http://127.0.0.1:9080; extra=""; fi
rm -rf "$dest"
AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1 taskset -c 0 /usr/bin/time -f "%e s %U user %S sys %M KiB" ${BIN:-/work/main/target/release/s3uring} --endpoint-url $url $extra "$@" s3://bench "$dest"
