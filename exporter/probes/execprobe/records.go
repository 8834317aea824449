package execprobe

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ark-gpu/ark/exporter/procstat"
)

// runEnv names the environment variable that marks every process of one
// run of a program. Its value, random per run, is kept in the program's
// record, so a restarted agent finds exactly the processes a killed agent
// left behind, and none that merely reuse their ids.
const runEnv = "ARK_EXEC_RUN"

// runRecord is what a program's record file holds while it runs.
type runRecord struct {
	AgentPID   int    `json:"agent_pid"`
	AgentStart uint64 `json:"agent_start_time"` // clock ticks since boot
	PGID       int    `json:"pgid"`
	Run        string `json:"run"` // the value of runEnv
}

// records keeps one file per running program under the agent's state
// directory. The leader of a program dies with the agent (Pdeathsig), but
// what it started in its group does not; the records let the next agent
// end those at start instead of running second copies beside them.
type records struct {
	dir       string // "" keeps no records
	procfs    string // always the agent's own /proc: its children live there
	logger    *slog.Logger
	self      int
	selfStart uint64
}

// newRecords keeps records under stateDir/exec/<node>; a stateDir of ""
// keeps none.
func newRecords(stateDir, node string, logger *slog.Logger) *records {
	r := &records{procfs: "/proc", logger: logger, self: os.Getpid()}
	if stateDir == "" {
		return r
	}
	if node == "" {
		node = "local"
	}
	r.dir = filepath.Join(stateDir, "exec", strings.ReplaceAll(node, string(filepath.Separator), "_"))
	if st, err := r.stat(r.self); err == nil {
		r.selfStart = st.StartTime
	}
	return r
}

func (r *records) path(program string) string {
	return filepath.Join(r.dir, program+".json")
}

func (r *records) stat(pid int) (procstat.Stat, error) {
	b, err := os.ReadFile(filepath.Join(r.procfs, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procstat.Stat{}, err
	}
	return procstat.Parse(b)
}

// newRun returns a fresh value for runEnv.
func newRun() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails on Linux (crypto/rand panics instead)
	return hex.EncodeToString(b)
}

// write records that program runs as process group pgid, marked run.
func (r *records) write(program string, pgid int, run string) error {
	if r.dir == "" {
		return nil
	}
	b, err := json.Marshal(runRecord{AgentPID: r.self, AgentStart: r.selfStart, PGID: pgid, Run: run})
	if err != nil {
		return fmt.Errorf("encoding the record of %s: %w", program, err)
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("recording program %s: %w", program, err)
	}
	tmp := r.path(program) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("recording program %s: %w", program, err)
	}
	if err := os.Rename(tmp, r.path(program)); err != nil {
		return fmt.Errorf("recording program %s: %w", program, err)
	}
	return nil
}

// remove forgets program's record once its process group is gone.
func (r *records) remove(program string) {
	if r.dir == "" {
		return
	}
	if err := os.Remove(r.path(program)); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.logger.Warn("removing an exec program's record", "program", program, "err", err)
	}
}

// reap ends what a previous agent left running of program: every process
// still in the recorded group that carries the recorded run mark. A record
// whose agent is still running (another agent sharing the state
// directory) is left alone. It returns how many processes it killed.
func (r *records) reap(program string) (int, error) {
	if r.dir == "" {
		return 0, nil
	}
	b, err := os.ReadFile(r.path(program))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the record of program %s: %w", program, err)
	}
	var rec runRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.PGID <= 1 || rec.Run == "" {
		r.remove(program)
		return 0, fmt.Errorf("record of program %s is malformed, removed: %q", program, b)
	}
	if st, err := r.stat(rec.AgentPID); err == nil && st.StartTime == rec.AgentStart && st.State != 'Z' {
		r.logger.Warn("an exec program's record belongs to a running agent, leaving its processes alone",
			"program", program, "agent_pid", rec.AgentPID)
		return 0, nil
	}
	killed, err := r.killMarked(rec)
	if err != nil {
		return killed, err
	}
	r.remove(program)
	return killed, nil
}

// killMarked SIGKILLs the processes of group rec.PGID marked with rec.Run.
func (r *records) killMarked(rec runRecord) (int, error) {
	entries, err := os.ReadDir(r.procfs)
	if err != nil {
		return 0, fmt.Errorf("listing processes: %w", err)
	}
	mark := []byte(runEnv + "=" + rec.Run)
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == r.self {
			continue
		}
		st, err := r.stat(pid)
		if err != nil || st.PGrp != rec.PGID || st.State == 'Z' {
			continue
		}
		env, err := os.ReadFile(filepath.Join(r.procfs, e.Name(), "environ"))
		if err != nil || !hasEnv(env, mark) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed++
		}
	}
	return killed, nil
}

// hasEnv reports whether a NUL-separated environment holds kv exactly.
func hasEnv(environ, kv []byte) bool {
	for v := range bytes.SplitSeq(environ, []byte{0}) {
		if bytes.Equal(v, kv) {
			return true
		}
	}
	return false
}
