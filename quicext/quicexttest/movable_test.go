package quicexttest

import (
	"net"
	"testing"
	"time"
)

func TestMovableConn(t *testing.T) {
	m, err := Listen("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	old := m.Addr()
	buf := make([]byte, 64)
	read := func() (string, error) {
		m.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := m.ReadFrom(buf)
		return string(buf[:n]), err
	}
	peer.WriteTo([]byte("a"), net.UDPAddrFromAddrPort(old))
	if s, err := read(); err != nil || s != "a" {
		t.Fatalf("read before move: %q %v", s, err)
	}
	next, err := m.Reserve("udp4", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	m.Freeze()
	peer.WriteTo([]byte("b"), net.UDPAddrFromAddrPort(old))
	peer.WriteTo([]byte("c"), net.UDPAddrFromAddrPort(next))
	if s, err := read(); err == nil {
		t.Fatalf("read while frozen: %q", s)
	}
	for deadline := time.Now().Add(2 * time.Second); m.DroppedFrozen.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	peer.WriteTo([]byte("d"), net.UDPAddrFromAddrPort(old))
	peer.WriteTo([]byte("e"), net.UDPAddrFromAddrPort(next))
	if s, err := read(); err != nil || s != "e" {
		t.Fatalf("read after move: %q %v", s, err)
	}
	for deadline := time.Now().Add(2 * time.Second); m.DroppedOld.Load() < 1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if m.DroppedOld.Load() != 1 || m.DroppedFrozen.Load() != 2 {
		t.Fatalf("dropped old=%d frozen=%d", m.DroppedOld.Load(), m.DroppedFrozen.Load())
	}
	if _, err := m.WriteTo([]byte("f"), peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(time.Second))
	_, from, err := peer.ReadFrom(buf)
	if err != nil || from.(*net.UDPAddr).AddrPort() != next {
		t.Fatalf("reply from %v (%v), want %v", from, err, next)
	}
	if err := m.Restore(); err != ErrNoReserved {
		t.Fatalf("restore without reserve: %v", err)
	}
}
