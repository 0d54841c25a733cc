# kmt: node
# (10) AFS node, OpenAFS: kmod-manager loads the DKMS-built openafs.ko (its own vermagic),
# afsd runs; the CSI driver (node, openafs) publishes the volume by name through
# /afs/.:mount/<cell>:<volume>, the root; the guard refuses while published; unpublish,
# afsd stopped (a root publish is then refused: /afs is no longer AFS), unload succeeds.
step "cell up"
check "the cell $CELL is up" cell_up
step "openafs.ko loaded by kmod-manager, afsd started"
check "kmod-manager loads openafs.ko; afsd mounts /afs" openafs_client_up
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
run_km /tmp/u1.log unload --config /kmt/etc/openafs.yaml
check "unload of openafs is refused" [ $? -ne 0 ]
for p in o1:$T1 o2:$T2 o3:$T3 o4:$T4; do
    check "the refusal names CSI target ${p#*:}" contains /tmp/u1.log "CSI target ${p#*:} of pod pod-${p%%:*}"
done
check "openafs is still loaded" grep -q '^openafs ' /proc/modules
step "unpublish, stop afsd, unload"
for t in $T1 $T2 $T3 $T4; do check "unpublish $t" unpublish $t vol; done
check "no target is mounted" sh -c "! grep -q kubernetes.io~csi /proc/mounts"
openafs_client_down
T5=$(target pod-o5 pv-root)
check "with afsd stopped, a root publish is refused: /afs is a plain directory" \
    refused /tmp/down.out "/afs is not the AFS filesystem" publish --volume-id root-o --target $T5 --attr mount-type=root
check "and nothing is left at the target" sh -c "[ ! -e $T5 ] && ! grep -q ' $T5 ' /proc/mounts"
run_km /tmp/u2.log unload --config /kmt/etc/openafs.yaml --wait 60s
check "unload of openafs succeeds" [ $? -eq 0 ]
check "openafs is unloaded" sh -c "! grep -q '^openafs ' /proc/modules"
check "no kernel oops" no_oops
