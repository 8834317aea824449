package jobs

import (
	"errors"
	"strings"
	"testing"
)

func TestEnvironEdgeCases(t *testing.T) {
	cases := []struct {
		name    string
		environ []byte
		ok      bool
		err     error
		job     string
		rank    int
	}{
		{"no launcher", env("HOME=/root", "PATH=/bin", "RANKING=3"), false, nil, "", -1},
		{"non-numeric RANK", env("RANK=zero", "MASTER_ADDR=a", "MASTER_PORT=1", "TORCHELASTIC_RUN_ID=x"), true, errBadRank, "", -1},
		{"negative SLURM_PROCID", env("SLURM_JOB_ID=1", "SLURM_PROCID=-1"), true, errBadRank, "", -1},
		{"rank without a job", env("RANK=1", "TORCHELASTIC_RUN_ID=none"), true, nil, "", 1},
		{"no trailing NUL and an empty entry", []byte("\x00=x\x00SLURM_JOB_ID=9\x00SLURM_PROCID=2"), true, nil, "slurm/9", 2},
		{"PMIx without Open MPI", env("PMIX_RANK=4", "PMIX_NAMESPACE=ns1"), true, nil, "mpi/ns1", 4},
		{"torch.distributed env://", env("RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=5"), true, nil, "torch/h:5", 0},
		{"value with '='", env("SLURM_JOB_ID=a=b", "SLURM_PROCID=0"), true, nil, "slurm/a=b", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, ok, err := ParseEnviron(c.environ)
			if ok != c.ok || !errors.Is(err, c.err) {
				t.Fatalf("ok %v err %v, want %v %v", ok, err, c.ok, c.err)
			}
			if err == nil && (l.JobID != c.job || l.Rank != c.rank) {
				t.Errorf("job %q rank %d, want %q %d", l.JobID, l.Rank, c.job, c.rank)
			}
		})
	}
}

func TestVisibleDevices(t *testing.T) {
	uuids := map[string]string{"gpu-6d1b7c1e-0000-1111-2222-333344445555": "5"}
	for in, want := range map[string]string{
		"0,1":    "0,1",
		"all":    "",
		"void":   "",
		"":       "",
		"2,-1,3": "2",
		"GPU-6d1b7c1e-0000-1111-2222-333344445555,GPU-aaaaaaaa-0000-1111-2222-333344445555": "5,GPU-aaaaaaaa-0000-1111-2222-333344445555",
	} {
		if got := strings.Join(visibleGPUs(in, uuids), ","); got != want {
			t.Errorf("visibleGPUs(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNCCLSocketIfnameSelectsTheInterface(t *testing.T) {
	routes := parseRoutes([]byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n" +
		"eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
		"eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"ib0\t0000100A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n" +
		"docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"))
	locals := parseLocalAddrs([]byte(`Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 127.0.0.1
        /32 host LOCAL
     |-- 192.0.2.2
        /32 host LOCAL
     |-- 10.16.3.4
        /32 host LOCAL
     |-- 172.17.0.1
        /32 host LOCAL
     |-- 10.16.255.255
        /32 link BROADCAST
`))
	for spec, want := range map[string]string{
		"":          "192.0.2.2", // the default route's interface
		"ib":        "10.16.3.4",
		"=ib0":      "10.16.3.4",
		"=ib":       "",
		"^eth,ib":   "172.17.0.1",
		"docker,ib": "10.16.3.4", // the kernel's route order, as NCCL walks interfaces
	} {
		got := pickAddr(routes, locals, spec)
		if (want == "" && got.IsValid()) || (want != "" && got.String() != want) {
			t.Errorf("NCCL_SOCKET_IFNAME=%q: %v, want %q", spec, got, want)
		}
	}
}
