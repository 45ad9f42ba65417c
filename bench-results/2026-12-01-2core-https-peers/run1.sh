#!/bin/bash
# run1.sh SCHEME WORKERS [extra...]: one s3uring run, prints objs/s, cpu µs/obj, connections
S=$1; W=$2; shift 2
B=${BIN:-/work/main/target/release/s3uring}
P=9200; [ $S = https ] && P=9201
D=/dev/shm/r1-$$-$RANDOM
export AWS_ACCESS_KEY_ID=s3uring AWS_SECRET_ACCESS_KEY=s3uring-demo-secret AWS_REGION=us-east-1
/usr/bin/time -f "T %e %U %S" $B -q --ca-bundle /tmp/pki/ca.pem --endpoint-url $S://127.0.0.1:$P --workers $W --queue 4096 --stats-json $D.json "$@" s3://bench $D 2>/tmp/run1.err >/dev/null
N=$(find $D -type f | wc -l)
read e u s <<<"$(grep '^T ' /tmp/run1.err | cut -d' ' -f2-)"
c=$(python3 -c "import json;d=json.load(open('$D.json'));print(d.get('fetch',{}).get('connections_opened', d.get('connections_opened')))" 2>/dev/null)
python3 -c "print(f'$S w=$W n=$N {($N)/$e:8.0f} obj/s  {($u+$s)*1e6/$N:6.1f} us/obj  conns=$c')"
rm -rf $D $D.json
