// Package fullfs gives tests a real filesystem that runs out of space: a
// small tmpfs mounted for the test and filled to the last byte, so writes
// fail with ENOSPC the way a full disk fails them.
package fullfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// fillerName is the file that takes up the space; Free removes it.
const fillerName = ".filler"

// Mount mounts a tmpfs of size bytes (rounded up to pages by the kernel) on
// a new directory and unmounts it when the test ends. It skips the test
// when the process may not mount (not root, or no CAP_SYS_ADMIN in a
// container): CI runs as root, so the test runs there.
func Mount(tb testing.TB, size int) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("mounting a tmpfs to fill needs root")
	}
	dir := filepath.Join(tb.TempDir(), "fullfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		tb.Skipf("cannot mount a tmpfs (%v): the full-disk test needs CAP_SYS_ADMIN", err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// Fill writes a filler file in dir until the filesystem is full and returns
// how many bytes it took.
func Fill(tb testing.TB, dir string) int64 {
	tb.Helper()
	f, err := os.OpenFile(filepath.Join(dir, fillerName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = f.Close() }() // full: the close has nothing to flush
	block := make([]byte, 4096)
	var n int64
	for {
		w, err := f.Write(block)
		n += int64(w)
		if errors.Is(err, unix.ENOSPC) {
			// The last page may take a few more bytes than a whole block.
			for {
				w, err := f.Write(block[:1])
				n += int64(w)
				if err != nil {
					break
				}
			}
			return n
		}
		if err != nil {
			tb.Fatalf("filling %s: %v", dir, err)
		}
	}
}

// Free removes the filler that Fill wrote, giving the space back.
func Free(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.Remove(filepath.Join(dir, fillerName)); err != nil {
		tb.Fatalf("freeing %s: %v", dir, err)
	}
}
