#!/bin/bash
# peer.sh: pinned HTTPS, client on core 0, endpoint (:9443) on core 1; wall s and objects/s
for i in 1 2 3; do
 for t in new base rclone; do
  d=/dev/shm/p-$t; rm -rf $d; s=$(date +%s.%N)
  case $t in
   new) BIN=/tmp/new-s3uring bash run.sh https $d >/dev/null 2>&1;;
   base) BIN=/tmp/base-target/release/s3uring bash run.sh https $d >/dev/null 2>&1;;
   rclone) env -u AWS_CA_BUNDLE RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_LIST_VERSION=2 RCLONE_CONFIG_BENCH_ENDPOINT=https://127.0.0.1:9443 RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=s3uring RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=s3uring-demo-secret taskset -c 0 rclone copy bench:bench $d --ca-cert ca.pem --transfers 64 --checkers 64 >/dev/null 2>&1;;
  esac
  e=$(date +%s.%N); n=$(find $d -type f | wc -l); echo "$t $(python3 -c "print(f'{$n/($e-$s):.0f}')") obj/s ($n files)"
 done
done
