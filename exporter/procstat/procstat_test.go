package procstat

import "testing"

func TestStateAndStartAgreesWithParse(t *testing.T) {
	for _, line := range []string{
		"4242 (python3) S 1 4242 4242 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 1 0 987654 1000000 100 18446744073709551615\n",
		"7 (a) b (c)) Z 1 7 7 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 1 0 12 1000000 100",
	} {
		st, err := Parse([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		state, start, err := StateAndStart([]byte(line))
		if err != nil || state != st.State || start != st.StartTime {
			t.Errorf("%q: %c %d %v, want %c %d", line, state, start, err, st.State, st.StartTime)
		}
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 4 1 0 0 0 1 1 0 0 20 0 1 0 12z 1"} {
		if _, _, err := StateAndStart([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
