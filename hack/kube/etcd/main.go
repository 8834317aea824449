// Command etcd is etcd's server, built from go.etcd.io/etcd/server/v3 at the
// version kube-apiserver pins, for the test control plane (hack/kube.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
