//go:build !unix

package analyze

import "os"

// mapFile maps nothing where mmap is not available; the recording is read
// into memory instead.
func mapFile(*os.File) (data []byte, unmap func(), ok bool, err error) {
	return nil, nil, false, nil
}
