package kubetest

import "syscall"

// sysProcAttr makes the kernel kill a component when the test binary dies,
// even by SIGKILL or a timeout's panic, which t.Cleanup never sees. The
// signal follows the OS thread that started the child; Go retires a thread
// only when a goroutine exits while locked to it, which tests do not do.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
