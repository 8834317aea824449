package fakeclock

import (
	"sync"
	"testing"
	"time"
)

func TestAdvanceMovesNowUnderConcurrentReaders(t *testing.T) {
	start := time.Unix(1000, 0)
	c := New(start)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				if c.Now().Before(start) {
					t.Error("the clock went back")
				}
			}
		})
	}
	for range 100 {
		c.Advance(time.Second)
	}
	wg.Wait()
	if got := c.Now(); !got.Equal(start.Add(100 * time.Second)) {
		t.Errorf("Now = %v, want %v", got, start.Add(100*time.Second))
	}
}
