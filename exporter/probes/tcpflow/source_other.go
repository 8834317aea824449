//go:build !linux

package tcpflow

import (
	"errors"
	"runtime"
)

func openBPF(Config) (source, error) {
	return nil, errors.New("eBPF flow accounting needs Linux, this is " + runtime.GOOS)
}
