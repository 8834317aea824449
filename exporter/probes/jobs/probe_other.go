//go:build !linux

package jobs

// supported: /proc has what the probe reads only on Linux.
const supported = false
