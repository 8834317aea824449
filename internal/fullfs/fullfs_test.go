package fullfs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFilledFilesystemRefusesWritesUntilFreed(t *testing.T) {
	dir := Mount(t, 64<<10)
	if n := Fill(t, dir); n <= 0 || n > 64<<10 {
		t.Fatalf("filler took %d bytes of a 64 KiB tmpfs", n)
	}
	p := filepath.Join(dir, "x")
	if err := os.WriteFile(p, make([]byte, 8192), 0o600); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("writing to a full tmpfs: err = %v, want ENOSPC", err)
	}
	Free(t, dir)
	if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
		t.Fatalf("writing after Free: %v", err)
	}
}
