package agents_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/link"
)

// maskedFrame is a client's text frame, as RFC 6455 requires it: masked.
func maskedFrame(payload []byte) []byte {
	key := [4]byte{1, 2, 3, 4}
	var b bytes.Buffer
	b.WriteByte(0x81) // FIN, text
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(0x80 | byte(n))
	default:
		b.Write([]byte{0x80 | 126, byte(n >> 8), byte(n)})
	}
	b.Write(key[:])
	for i, c := range payload {
		b.WriteByte(c ^ key[i%4])
	}
	return b.Bytes()
}

// An agent may send its hello in the same packet as its upgrade request:
// the bytes net/http has already buffered must reach the link, though the
// hub swaps net/http's buffers for smaller ones.
func TestHelloPipelinedWithTheUpgradeIsNotLost(t *testing.T) {
	connected := make(chan string, 1)
	srv, err := agents.NewServer(agents.Options{Insecure: true,
		OnConnect: func(node string, _ []string) { connected <- node }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()

	hello, err := link.Encode(&link.Frame{Type: link.TypeHello, V: link.Version, Node: "node-7"})
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(hs.URL, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET " + link.Path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), maskedFrame(hello)...)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	select {
	case node := <-connected:
		if node != "node-7" {
			t.Fatalf("connected %q", node)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pipelined hello was lost")
	}
	// And the hub's welcome comes back through the small write buffer.
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, hdr[1]&0x7f)
	if _, err := io.ReadFull(br, payload); err != nil {
		t.Fatal(err)
	}
	f, err := link.Decode(payload)
	if err != nil || f.Type != link.TypeWelcome {
		t.Fatalf("welcome: %+v %v (%q)", f, err, payload)
	}
}
