package jobs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCgroupPathsOfEachRuntimeAndDriverMapToThePod(t *testing.T) {
	const (
		uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
		id  = "4e8a1c3b7d2f9e6a5b0c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a"
	)
	cases := []struct {
		file    string
		inPod   bool
		runtime string
		err     error
	}{
		{"containerd-v1-cgroupfs", true, RuntimeContainerd, nil},
		{"containerd-v1-systemd", true, RuntimeContainerd, nil},
		{"containerd-v2-systemd", true, RuntimeContainerd, nil},
		{"containerd-v2-cgroupfs-guaranteed", true, RuntimeContainerd, nil},
		{"crio-v1-cgroupfs", true, RuntimeCRIO, nil},
		{"crio-v1-systemd", true, RuntimeCRIO, nil},
		{"crio-v2-systemd", true, RuntimeCRIO, nil},
		{"crio-v2-cgroupfs", true, RuntimeCRIO, nil},
		{"crio-conmon", false, "", nil},
		{"unknown-runtime", true, "", errUnknownRuntime},
		{"pod-level", true, "", errUnknownRuntime},
		{"slurm-not-kubernetes", false, "", nil},
		{"host-process", false, "", nil},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "cgroup", c.file))
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := ParseCgroup(b)
			if !errors.Is(err, c.err) || ok != c.inPod {
				t.Fatalf("ParseCgroup: in pod %v, err %v; want %v, %v", ok, err, c.inPod, c.err)
			}
			if !ok {
				return
			}
			if got.PodUID != uid {
				t.Errorf("pod UID %q, want %q", got.PodUID, uid)
			}
			if c.err == nil && (got.Runtime != c.runtime || got.ID != id) {
				t.Errorf("runtime %q id %q, want %q %q", got.Runtime, got.ID, c.runtime, id)
			}
		})
	}
}
