package analyze

import "golang.org/x/sys/unix"

// mapPopulate faults the whole recording in with one call rather than a
// page fault per 4 KiB as it is first read.
const mapPopulate = unix.MAP_POPULATE
