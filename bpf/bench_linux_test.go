package bpf

import (
	"io"
	"net"
	"testing"
)

// transfer sends b.N chunks of 256 KiB over one loopback connection.
func transfer(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.Close()
	<-done
}

// BenchmarkLoopbackThroughput is the programs' cost on the hot path: the
// same loopback transfer without and with flow.c attached, in one run
// (compare the MB/s of the two).
func BenchmarkLoopbackThroughput(b *testing.B) {
	b.Run("detached", transfer)
	b.Run("attached", func(b *testing.B) {
		f := loadOrSkip(b)
		defer f.Close()
		transfer(b)
	})
}
