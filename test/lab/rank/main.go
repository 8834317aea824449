// Command rank is the lab's stand-in for one rank of a distributed training
// job. It runs a ring all-reduce over TCP the way NCCL's ring does: every
// step it sends a chunk to the next rank while it reads a chunk from the
// previous one, and a step ends only when both are done. So when one rank
// stops (its GPU fell off the bus and the process hangs), its neighbours
// stall, then the whole ring does — without a packet being lost.
//
// It reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID), so the agent's job
// discovery finds it as it would a real rank. The ring's addresses come from
// ARK_LAB_PEERS ("ip:port,ip:port,…", one per rank in rank order), standing
// in for torchrun's rendezvous store.
//
// It prints one progress line a second ("rank 2 step 140 steps/s 9.8"). On
// SIGUSR1 it writes a checkpoint file under -checkpoint-dir and prints
// "checkpoint <path>".
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	chunk := flag.Int("chunk", 2<<20, "bytes sent to the next rank each step")
	interval := flag.Duration("step-interval", 100*time.Millisecond, "shortest time a step takes (the compute between collectives)")
	ckptDir := flag.String("checkpoint-dir", os.TempDir(), "where SIGUSR1 writes a checkpoint")
	device := flag.String("device", "", "a device file to hold open, as a CUDA process holds /dev/nvidia<N>")
	flag.Parse()
	log.SetFlags(0)

	rank, err := envInt("RANK")
	if err != nil {
		log.Fatal(err)
	}
	world, err := envInt("WORLD_SIZE")
	if err != nil {
		log.Fatal(err)
	}
	peers := strings.Split(os.Getenv("ARK_LAB_PEERS"), ",")
	if len(peers) != world || rank < 0 || rank >= world {
		log.Fatalf("rank: ARK_LAB_PEERS has %d addresses for WORLD_SIZE %d, RANK %d", len(peers), world, rank)
	}
	if *device != "" {
		f, err := os.OpenFile(*device, os.O_RDWR, 0)
		if err != nil {
			log.Fatalf("rank: opening the device: %v", err)
		}
		defer func() { _ = f.Close() }()
	}

	var steps atomic.Int64
	go checkpointOnSignal(rank, *ckptDir, &steps)
	go report(rank, &steps)

	next, prev, err := ring(peers, rank, world)
	if err != nil {
		log.Fatal(err)
	}
	send := make([]byte, *chunk)
	recv := make([]byte, *chunk)
	for {
		start := time.Now()
		sent := make(chan error, 1)
		go func() {
			_, err := next.Write(send)
			sent <- err
		}()
		if _, err := io.ReadFull(prev, recv); err != nil {
			log.Fatalf("rank %d: reading from the previous rank: %v", rank, err)
		}
		if err := <-sent; err != nil {
			log.Fatalf("rank %d: writing to the next rank: %v", rank, err)
		}
		steps.Add(1)
		if d := *interval - time.Since(start); d > 0 {
			time.Sleep(d)
		}
	}
}

// ring listens on this rank's address, dials the next rank (retrying while it
// starts) and accepts the previous one.
func ring(peers []string, rank, world int) (next, prev net.Conn, err error) {
	ln, err := net.Listen("tcp", peers[rank])
	if err != nil {
		return nil, nil, fmt.Errorf("rank %d: listening: %w", rank, err)
	}
	defer func() { _ = ln.Close() }()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("rank %d: accepting the previous rank: %v", rank, err)
		}
		accepted <- c
	}()
	to := peers[(rank+1)%world]
	deadline := time.Now().Add(2 * time.Minute)
	for {
		next, err = net.DialTimeout("tcp", to, 2*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("rank %d: dialing the next rank %s: %w", rank, to, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case prev = <-accepted:
	case <-time.After(2 * time.Minute):
		return nil, nil, errors.New("rank: the previous rank never connected")
	}
	return next, prev, nil
}

func report(rank int, steps *atomic.Int64) {
	last := steps.Load()
	for range time.Tick(time.Second) {
		n := steps.Load()
		fmt.Printf("rank %d step %d steps/s %.1f\n", rank, n, float64(n-last))
		last = n
	}
}

func checkpointOnSignal(rank int, dir string, steps *atomic.Int64) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	for range c {
		path := filepath.Join(dir, fmt.Sprintf("rank-%d.ckpt", rank))
		data := fmt.Sprintf("rank %d step %d\n", rank, steps.Load())
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			fmt.Printf("checkpoint failed: %v\n", err)
			continue
		}
		fmt.Printf("checkpoint %s\n", path)
	}
}

func envInt(name string) (int, error) {
	v, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return 0, fmt.Errorf("rank: %s: %w", name, err)
	}
	return v, nil
}
