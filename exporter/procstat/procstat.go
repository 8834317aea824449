// Package procstat parses /proc/<pid>/stat: the process state, CPU time
// and start time that the procfs probe, the executor and tests read.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Stat is what Ark reads from /proc/<pid>/stat.
type Stat struct {
	State     byte
	PGrp      int    // process group
	UTime     uint64 // clock ticks
	STime     uint64
	StartTime uint64
}

// Parse parses the contents of /proc/<pid>/stat. The command name is
// in parentheses and may itself contain spaces and parentheses, so fields
// are counted from the last ')'.
func Parse(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Stat{}, errors.New("malformed stat: no command")
	}
	f := bytes.Fields(b[i+2:])
	// f[0] is field 3 (state); pgrp is 5, utime 14, stime 15, starttime 22.
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("malformed stat: %d fields", len(f)+2)
	}
	var st Stat
	st.State = f[0][0]
	var err error
	if st.PGrp, err = strconv.Atoi(string(f[2])); err != nil {
		return Stat{}, fmt.Errorf("malformed stat pgrp: %w", err)
	}
	if st.UTime, err = strconv.ParseUint(string(f[11]), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("malformed stat utime: %w", err)
	}
	if st.STime, err = strconv.ParseUint(string(f[12]), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("malformed stat stime: %w", err)
	}
	if st.StartTime, err = strconv.ParseUint(string(f[19]), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("malformed stat starttime: %w", err)
	}
	return st, nil
}

// StateAndStart reads only the state (field 3) and the start time (field
// 22) from /proc/<pid>/stat, without allocating: what a scan of every
// process needs to tell a known process from a new one.
func StateAndStart(b []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, errors.New("malformed stat: no command")
	}
	field := 3
	for j := i + 2; j < len(b); {
		for j < len(b) && b[j] == ' ' {
			j++
		}
		k := j
		for k < len(b) && b[k] != ' ' && b[k] != '\n' {
			k++
		}
		if k == j {
			break
		}
		switch field {
		case 3:
			state = b[j]
		case 22:
			for _, c := range b[j:k] {
				if c < '0' || c > '9' {
					return 0, 0, errors.New("malformed stat starttime")
				}
				start = start*10 + uint64(c-'0')
			}
			return state, start, nil
		}
		field++
		j = k
	}
	return 0, 0, fmt.Errorf("malformed stat: %d fields", field-1)
}
