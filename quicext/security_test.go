package quicext

import (
	"bufio"
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// poolTargets returns n distinct loopback targets.
func poolTargets(n int) []Target {
	var ts []Target
	for i := range n {
		ts = append(ts, Target{IPv4: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)}), 4433)})
	}
	return ts
}

// TestPoolCap: a server configured with more than MaxPool addresses sends MaxPool; a server
// that sends more anyway gets the excess ignored by the client.
func TestPoolCap(t *testing.T) {
	t.Run("server caps", func(t *testing.T) {
		tb := newTestbed(t, false, ServerConfig{Pool: poolTargets(MaxPool + 3)})
		tb.dial(1, ClientOptions{}, 10*time.Millisecond)
		c := tb.clients[0]
		waitFor(t, 2*time.Second, "pool", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return len(c.pool) == MaxPool
		})
		time.Sleep(50 * time.Millisecond)
		c.mu.Lock()
		n := len(c.pool)
		c.mu.Unlock()
		if n != MaxPool {
			t.Fatalf("client pool %d, want %d", n, MaxPool)
		}
	})
	t.Run("client caps", func(t *testing.T) {
		addr := fakeServer(t, false, func(c *quic.Conn) {
			r, err := c.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			br := bufio.NewReader(r)
			if readStreamType(br) != nil {
				return
			}
			if m, err := readMessage(br); err != nil || m.typ != MsgNegotiate {
				return
			}
			s, err := c.OpenUniStream()
			if err != nil {
				return
			}
			b := quicvarint.Append(nil, StreamType)
			b = appendMessage(b, message{typ: MsgNegotiate, value: uint64(StrategyPool)})
			for _, tg := range poolTargets(MaxPool + 4) {
				b = appendMessage(b, message{typ: MsgPoolMigrationAddress, addr: tg})
			}
			s.Write(b)
			<-c.Context().Done()
		})
		_, ctls := tlsConfs(t)
		var mu sync.Mutex
		var announced, full int
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cc, err := Dial(ctx, addr, ctls, testQUICConf(), ClientOptions{OnEvent: func(e Event) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case e.Kind == EventAnnounced && e.Strategy == StrategyPool:
				announced++
			case e.Kind == EventIgnored && strings.Contains(e.Err.Error(), "pool full"):
				full++
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.CloseWithError(0, "")
		waitFor(t, 3*time.Second, "pool messages", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return announced+full == MaxPool+4
		})
		cc.mu.Lock()
		n := len(cc.pool)
		cc.mu.Unlock()
		if announced != MaxPool || full != 4 || n != MaxPool {
			t.Fatalf("announced %d, ignored as full %d, pool %d; want %d, 4, %d", announced, full, n, MaxPool, MaxPool)
		}
	})
}

// TestMessagesBeforeNegotiation: a server that sends SERVER_MIGRATED and a STRATEGY as 0.5-RTT
// data, before the handshake is confirmed and before its NEGOTIATE answer, gets them ignored:
// no probe, no switch, and they are not counted by MIGRATION_ACK.
func TestMessagesBeforeNegotiation(t *testing.T) {
	acks := make(chan uint64, 16)
	addr := fakeServer(t, true, func(c *quic.Conn) {
		s, err := c.OpenUniStream()
		if err != nil {
			return
		}
		b := quicvarint.Append(nil, StreamType)
		b = appendMessage(b, message{typ: MsgStrategy, value: uint64(StrategyExplicit)})
		b = appendMessage(b, message{typ: MsgServerMigration, addr: Target{IPv4: mustAP("127.0.0.13:4433")}, hasAddr: true})
		b = appendMessage(b, message{typ: MsgServerMigrated, addr: Target{IPv4: mustAP("127.0.0.13:4433")}})
		s.Write(b) // before HandshakeComplete: 0.5-RTT
		<-c.HandshakeComplete()
		r, err := c.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		br := bufio.NewReader(r)
		if readStreamType(br) != nil {
			return
		}
		if m, err := readMessage(br); err != nil || m.typ != MsgNegotiate {
			return
		}
		s.Write(appendMessage(nil, message{typ: MsgNegotiate, value: uint64(AllStrategies)}))
		s.Write(appendMessage(nil, message{typ: MsgMigrationCancel}))
		for {
			m, err := readMessage(br)
			if err != nil {
				return
			}
			if m.typ == MsgMigrationAck {
				acks <- m.value
			}
		}
	})
	_, ctls := tlsConfs(t)
	var mu sync.Mutex
	var kinds []EventKind
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := Dial(ctx, addr, ctls, testQUICConf(), ClientOptions{OnEvent: func(e Event) {
		mu.Lock()
		kinds = append(kinds, e.Kind)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.CloseWithError(0, "")
	select {
	case n := <-acks:
		// only the MIGRATION_CANCEL after the NEGOTIATE answer counts
		if n != 1 {
			t.Fatalf("first MIGRATION_ACK counts %d, want 1", n)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no MIGRATION_ACK")
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	ignored := 0
	for _, k := range kinds {
		switch k {
		case EventIgnored:
			ignored++
		case EventProbing, EventSwitched, EventAnnounced:
			t.Fatalf("acted on a message sent before negotiation: %v", kinds)
		}
	}
	if ignored != 3 {
		t.Fatalf("ignored %d messages, want 3 (%v)", ignored, kinds)
	}
	if got := cc.ServerAddr().String(); got != addr {
		t.Fatalf("server address %s, want %s", got, addr)
	}
}
