package jobs

import (
	"bytes"
	"errors"
	"strings"
)

// Container runtimes recognised in cgroup paths.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
)

// Container is where a process runs under the kubelet.
type Container struct {
	PodUID  string // with dashes, as the API server writes it
	ID      string // the runtime's container id
	Runtime string
}

// errUnknownRuntime: the process is in a pod's cgroup, but in no container
// layout this package knows.
var errUnknownRuntime = errors.New("unknown container runtime in cgroup path")

// ParseCgroup reads /proc/<pid>/cgroup's contents and finds the pod and
// container the process runs in. It knows the kubelet's cgroupfs and
// systemd drivers, cgroup v1 and v2, and the containerd, CRI-O and
// Docker (cri-dockerd) layouts:
//
//	/kubepods/burstable/pod<uid>/<id>                                               cgroupfs, containerd
//	/kubepods/pod<uid>/crio-<id>                                                    cgroupfs, CRI-O
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//	/kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope                        systemd
//
// ok is false for a process outside Kubernetes; err is errUnknownRuntime
// for a pod path whose container part matches no layout.
func ParseCgroup(b []byte) (c Container, ok bool, err error) {
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		// hierarchy-id:controllers:path; the path may itself hold ':'.
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := bytes.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		path := line[i+1+j+1:]
		if !bytes.Contains(path, []byte("kubepods")) {
			continue
		}
		return parseKubePath(string(path))
	}
	return Container{}, false, nil
}

func parseKubePath(path string) (Container, bool, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	podAt := -1
	var c Container
	for i, s := range segs {
		if uid, ok := podUID(s); ok {
			c.PodUID, podAt = uid, i
		}
	}
	if podAt < 0 {
		// kubepods itself or a QoS slice: the kubelet's, not a pod's.
		return Container{}, false, nil
	}
	if podAt+1 >= len(segs) {
		return c, true, errUnknownRuntime
	}
	last := segs[podAt+1]
	switch {
	case strings.HasPrefix(last, "cri-containerd-") && strings.HasSuffix(last, ".scope"):
		c.Runtime, c.ID = RuntimeContainerd, strings.TrimSuffix(strings.TrimPrefix(last, "cri-containerd-"), ".scope")
	case strings.HasPrefix(last, "crio-conmon-"):
		// CRI-O's monitor process, not the container.
		return Container{}, false, nil
	case strings.HasPrefix(last, "crio-"):
		c.Runtime, c.ID = RuntimeCRIO, strings.TrimSuffix(strings.TrimPrefix(last, "crio-"), ".scope")
	case strings.HasPrefix(last, "docker-") && strings.HasSuffix(last, ".scope"):
		c.Runtime, c.ID = RuntimeDocker, strings.TrimSuffix(strings.TrimPrefix(last, "docker-"), ".scope")
	case isHexID(last):
		// The cgroupfs driver names the container's cgroup by its bare id
		// (containerd; Docker does the same).
		c.Runtime, c.ID = RuntimeContainerd, last
	default:
		return c, true, errUnknownRuntime
	}
	if !isHexID(c.ID) {
		return c, true, errUnknownRuntime
	}
	return c, true, nil
}

// podUID reads a pod's cgroup name: pod<uid> (cgroupfs) or
// kubepods[-<qos>]-pod<uid with '_' for '-'>.slice (systemd).
func podUID(seg string) (string, bool) {
	if s, ok := strings.CutSuffix(seg, ".slice"); ok {
		i := strings.LastIndex(s, "-pod")
		if i < 0 || !strings.HasPrefix(s, "kubepods") {
			return "", false
		}
		uid := strings.ReplaceAll(s[i+len("-pod"):], "_", "-")
		return uid, isUID(uid)
	}
	uid, ok := strings.CutPrefix(seg, "pod")
	return uid, ok && isUID(uid)
}

// isUID: 8-4-4-4-12 hex digits.
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

// isHexID: a container id, 64 hex digits.
func isHexID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
}
