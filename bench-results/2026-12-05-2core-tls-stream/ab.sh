#!/bin/bash
# ab.sh REPS LABEL=BIN... : pinned client CPU (user+sys s) per run, http and https, interleaved
reps=$1; shift
for i in $(seq $reps); do for lb in "$@"; do l=${lb%%=*}; b=${lb#*=}; for s in http https; do
  r=$(BIN=$b bash ./run.sh $s /dev/shm/d-$s 2>&1 | tail -1); echo "$l $s $(echo $r | awk '{print $3+$5}')"; done; done; done > /tmp/prof/ab.out
python3 - <<'P'
import collections,statistics
d=collections.defaultdict(list)
for l in open('/tmp/prof/ab.out'):
    a,s,v=l.split(); d[(a,s)].append(float(v))
labels=sorted(set(a for a,_ in d))
for a in labels:
    h=statistics.median(d[(a,'http')]); t=statistics.median(d[(a,'https')])
    print(f"{a:8s} http {h:.3f} https {t:.3f} ratio {t/h:.3f}  per-object µs: {h/2e4*1e6:.1f} / {t/2e4*1e6:.1f}   (n={len(d[(a,'http')])})")
P
