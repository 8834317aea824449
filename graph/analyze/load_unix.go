//go:build unix

package analyze

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps a regular file read-only, so a recording of hundreds of
// megabytes is read from the page cache without a copy on the Go heap. It
// returns ok false for what cannot be mapped (a pipe, an empty file).
func mapFile(f *os.File) (data []byte, unmap func(), ok bool, err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, nil, false, fmt.Errorf("reading recording: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() == 0 || int64(int(st.Size())) != st.Size() {
		return nil, nil, false, nil
	}
	data, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE|mapPopulate)
	if err != nil {
		return nil, nil, false, nil // read it instead
	}
	return data, func() { _ = unix.Munmap(data) }, true, nil
}
