//go:build !linux

package kubetest

import "syscall"

// sysProcAttr: only Linux can tie a child's life to its parent's; elsewhere
// a killed test binary leaves its components running.
func sysProcAttr() *syscall.SysProcAttr { return nil }
