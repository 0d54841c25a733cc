# kmt: node
# (10) AFS node, OpenAFS through the stack: `kmod-manager run` loads the DKMS-built
# openafs.ko (its own vermagic), starts afsd from the client config and mounts /afs; the
# CSI driver (node, openafs) publishes the volume by name through
# /afs/.:mount/<cell>:<volume>, the root; the guard refuses while published; an
# AFS root unmounted behind its back makes the node not ready; unpublish, SIGTERM: /afs unmounted, afsd stopped,
# openafs unloaded (a root publish is then refused: /afs is no longer AFS).
step "cell up"
check "the cell $CELL is up" cell_up
step "openafs.ko and afsd through the stack"
check "kmod-manager run: openafs.ko loaded, afsd started, /afs mounted" stack_up openafs
check "afsd ran with the settings of the client config" contains /tmp/km.log "afsd started"
check "the loaded module is the DKMS build (vermagic $KVER)" sh -c "grep -q '^openafs ' /proc/modules && modinfo -F vermagic /lib/modules/$KVER/extra/openafs.ko | grep -q '^$KVER '"
show stat -f -c 'statfs type of /afs: %t' /afs
check "OpenAFS's /afs reports the magic 5346414f" sh -c "stat -f -c %t /afs | grep -qx 5346414f"
check "csi-driver (node, openafs) answers" csi_start openafs
VOL="--attr mount-type=volume --attr cell-name=$CELL --attr volume-name=$TESTVOL"
T1=$(target pod-o1 pv-o1) T2=$(target pod-o2 pv-o2) T3=$(target pod-o3 pv-o3) T4=$(target pod-o4 pv-root)
step "publish $TESTVOL by name"
check "publish on pod-o1's target" publish $T1 vol-o1 $VOL
check "the target is an afs mount" grep -q " $T1 afs rw," /proc/mounts
STAMP="written through openafs at $(date +%s.%N)"
check "a file written through the target" sh -c "echo '$STAMP' > $T1/hello-openafs.txt"
check "publish on pod-o2's target" publish $T2 vol-o2 $VOL
check "the file reads back through the second target" grep -qxF "$STAMP" $T2/hello-openafs.txt
check "the file reads back through /afs/.:mount/$CELL:$TESTVOL" grep -qxF "$STAMP" "/afs/.:mount/$CELL:$TESTVOL/hello-openafs.txt"
check "the file reads back through /afs/$CELL/$TESTVOL" grep -qxF "$STAMP" /afs/$CELL/$TESTVOL/hello-openafs.txt
check "read-only publish on pod-o3's target" publish $T3 vol-o3 $VOL --readonly
check "writing through the read-only target fails with EROFS" writes_refused_erofs $T3/hello-openafs.txt
check "publish mount-type=root on pod-o4's target" publish $T4 root-o --attr mount-type=root
check "the test volume is reachable under the root target" grep -q made-by-cell-init $T4/$CELL/$TESTVOL/README
step "unload while in use"
run_km /tmp/u1.log unload --config /tmp/km-openafs.yaml
check "unload of openafs is refused" [ $? -ne 0 ]
for p in o1:$T1 o2:$T2 o3:$T3 o4:$T4; do
    check "the refusal names CSI target ${p#*:}" contains /tmp/u1.log "CSI target ${p#*:} of pod pod-${p%%:*}"
done
check "openafs is still loaded" grep -q '^openafs ' /proc/modules
step "unpublish; the pod stops (SIGTERM)"
for t in $T1 $T2 $T3 $T4; do check "unpublish $t" unpublish $t vol; done
check "no target is mounted" sh -c "! grep -q kubernetes.io~csi /proc/mounts"
check "kmod-manager exits 0" stack_down
check "it unmounted the AFS root, then stopped afsd, then unloaded" \
    in_order /tmp/km.log "AFS root unmounted" "afsd -shutdown" "module unloaded"
check "/afs unmounted, no afsd left, openafs unloaded" afs_down
T5=$(target pod-o5 pv-root)
check "with the client down, a root publish is refused: /afs is a plain directory" \
    refused /tmp/down.out "/afs is not the AFS filesystem" publish --volume-id root-o --target $T5 --attr mount-type=root
check "and nothing is left at the target" sh -c "[ ! -e $T5 ] && ! grep -q ' $T5 ' /proc/mounts"
step "a client that goes down makes the node not ready"
: > /tmp/km.log
check "the client comes up again" stack_up openafs
check "someone unmounts /afs behind the stack's back" umount /afs
check "/readyz turns not ready within 15 s" sh -c "i=0; while [ \$i -lt 75 ]; do $BB wget -q -O - http://127.0.0.1:9808/readyz 2>/dev/null | grep -q '^ready' || exit 0; $BB usleep 200000; i=\$((i + 1)); done; exit 1"
check "the log says why" contains /tmp/km.log "the AFS root /afs is not mounted"
check "kmod-manager exits 0 on SIGTERM" stack_down
check "afsd stopped and openafs unloaded all the same" afs_down
check "no kernel oops" no_oops
