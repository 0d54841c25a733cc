# Boot run once at preparation time (tests/vm/node/prepare): creates the cell's
# databases and volumes (root.afs, root.cell, test.vol), the mount point of test.vol in
# root.cell, ACLs granting system:anyuser, then stops the servers cleanly and saves the
# partition and databases to the cell cache (tar), which every scenario boot restores.
step "cell configuration ($ADDR on lo only) and servers"
cell_config
check "ptserver, vlserver, fileserver and volserver answer" cell_servers
for v in root.afs root.cell $TESTVOL; do
    check "vos create $v" show vos create $ADDR a $v -maxquota 0 -noauth -cell $CELL
done
# The host entry $ADDR joins system:administrators so that this unauthenticated
# client may set ACLs (fileservers add a host's rights to every caller from it); it
# leaves again once the ACLs are set.
check "pts: host $ADDR in system:administrators" sh -c "pts createuser -name $ADDR -noauth -cell $CELL >/dev/null && pts adduser -user $ADDR -group system:administrators -noauth -cell $CELL"
step "openafs client, to make the mount point and the ACLs"
check "openafs.ko loaded and afsd started" openafs_client_up
R=/afs/.:mount/$CELL:root.cell
check "mount point $TESTVOL in root.cell" show fs mkmount -dir $R/$TESTVOL -vol $TESTVOL -cell $CELL
check "mount point $CELL in root.afs" show fs mkmount -dir /afs/.:mount/$CELL:root.afs/$CELL -vol root.cell -cell $CELL
for d in /afs/.:mount/$CELL:root.afs $R $R/$TESTVOL; do
    check "ACL system:anyuser write on $d" show fs setacl -dir $d -acl system:anyuser write
done
check "the test volume is writable through the client" sh -c "echo made-by-cell-init > $R/$TESTVOL/README && grep -q made-by-cell-init $R/$TESTVOL/README"
show fs listacl $R/$TESTVOL
# From now on only the ACLs grant access: the host leaves system:administrators.
check "pts: host $ADDR leaves system:administrators" pts removeuser -user $ADDR -group system:administrators -noauth -cell $CELL
openafs_client_down
check "servers stopped cleanly" cell_down
check "cell saved to the cache" sh -c "tar -cf $CELLTAR.tmp -C / vicepa var/lib/openafs/db && mv $CELLTAR.tmp $CELLTAR"
