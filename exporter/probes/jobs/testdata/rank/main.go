// Command rank stands in for a training rank in tests: it opens the files
// named on its command line (a GPU device node, say), holds them open,
// writes "ready" on stdout and lives until its stdin is closed.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
)

func main() {
	var held []*os.File
	for _, p := range os.Args[1:] {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		held = append(held, f)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive(held)
}
