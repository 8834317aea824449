package jobs

import (
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probes/jobs/jobstest"
)

// TestRankInItsOwnNetworkNamespaceHasThatNamespacesAddress starts a rank
// in a new network namespace (unshare --net) with a veth pair of its own,
// as a pod has, and expects the probe to report the namespace's address,
// not the host's.
func TestRankInItsOwnNetworkNamespaceHasThatNamespacesAddress(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a network namespace and a veth pair needs root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("needs unshare(1) from util-linux: %v", err)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skipf("needs ip(8) from iproute2: %v", err)
	}
	bin := jobstest.BuildRank(t)
	// Everything is made inside the new namespace, so it goes with the
	// rank: nothing to clean up on the host.
	setup := `set -e
"$IP" link add ark-pod0 type veth peer name ark-pod1
"$IP" addr add 10.213.7.5/24 dev ark-pod0
"$IP" addr add 10.213.8.5/24 dev ark-pod1
"$IP" link set ark-pod0 up
"$IP" link set ark-pod1 up
"$IP" route add default via 10.213.8.1 dev ark-pod1
exec "$@"`
	rankEnv := []string{"IP=" + ip, "SLURM_JOB_ID=77", "SLURM_PROCID=3"}
	// NCCL_SOCKET_IFNAME picks the interface; without it, the default
	// route's.
	named := jobstest.Start(t, append(rankEnv, "NCCL_SOCKET_IFNAME=ark-pod0"), unshare, "--net", "--", "/bin/sh", "-c", setup, "sh", bin)
	deflt := jobstest.Start(t, rankEnv, unshare, "--net", "--", "/bin/sh", "-c", setup, "sh", bin)
	hostNS, _ := os.Readlink("/proc/self/ns/net")
	if ns, _ := os.Readlink("/proc/" + strconv.Itoa(named.PID()) + "/ns/net"); ns == hostNS {
		t.Fatalf("the rank shares the host's network namespace %s", ns)
	}

	ts := newTestScanner(t, "/proc", Config{}, nil)
	sk := &sink{}
	evs := scanUntil(t, ts, sk, "both ranks", func(evs []event.Event) bool {
		_, a := intentOf(evs, named.PID())
		_, b := intentOf(evs, deflt.PID())
		return a && b
	})
	for _, c := range []struct {
		r    *jobstest.Rank
		want string
	}{{named, "10.213.7.5"}, {deflt, "10.213.8.5"}} {
		ev, _ := intentOf(evs, c.r.PID())
		if got := ev.Attrs.Get(event.AttrAddr); got != c.want {
			t.Errorf("pid %d: addr %q, want the namespace's %s", c.r.PID(), got, c.want)
		}
		if ev.JobID != "slurm/77" || ev.Attrs.Get(event.AttrRank) != "3" {
			t.Errorf("pid %d: job %q rank %q", c.r.PID(), ev.JobID, ev.Attrs.Get(event.AttrRank))
		}
	}
}
