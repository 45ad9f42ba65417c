#!/bin/bash
# usage: ab.sh REPS URL "name|args" ...   (anonymous endpoint)
reps=$1; url=$2; shift 2
for r in $(seq $reps); do
  for cfg in "$@"; do
    name=${cfg%%|*}; args=${cfg#*|}
    d=${DESTBASE:-/dev/shm}/ab-$name-$r; rm -rf $d
    bin=/work/main/target/release/s3uring; case "$args" in @*) bin=${args%% *}; bin=${bin#@}; args=${args#* };; esac
    $bin -q ${AUTH:---no-sign-request} --endpoint-url $url --stats-json /tmp/ab/$name-$r.json $args s3://bench $d
    python3 -c "
import json;d=json.load(open('/tmp/ab/$name-$r.json'))
print('$name', $r, round(d['throughput']['objects_per_s']), round(d['cpu']['us_per_object'],1), d['writer']['files_per_submit'])"
    [ -n "$KEEP" ] || rm -rf $d
  done
done | tee /tmp/ab/last.txt
python3 - <<'PY'
import collections,statistics
g=collections.defaultdict(list)
for l in open('/tmp/ab/last.txt'):
    n,r,ops,cpu,fps=l.split()[:5]; g[n].append((float(ops),float(cpu)))
for n,v in g.items():
    print(f"{n:24s} median {statistics.median(x[0] for x in v):8.0f} obj/s  {statistics.median(x[1] for x in v):6.1f} us/obj  (n={len(v)})")
PY
