// Package quicexttest has test helpers for server-side QUIC migration: a net.PacketConn that a
// test moves from one UDP address to another while the QUIC state above it stays in memory,
// which is what a CRIU checkpoint/restore of the server container onto another node does.
package quicexttest

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoReserved is returned by Restore without a prior Reserve.
var ErrNoReserved = errors.New("quicexttest: no address reserved")

type packet struct {
	b    []byte
	from net.Addr
}

// MovableConn is a net.PacketConn over a succession of UDP sockets. Reserve binds the next
// socket (what it receives is dropped: the service is not there yet), Freeze stops the conn
// (reads and writes are dropped: the container is frozen, queued packets are lost), Restore
// makes the reserved socket the live one and blackholes the old one (it stays bound and drops
// every packet, so nothing answers on the old address). LocalAddr stays the first socket's
// address (the stable pod address).
type MovableConn struct {
	first net.Addr

	mu       sync.Mutex
	cur      *net.UDPConn
	reserved *net.UDPConn
	all      []*net.UDPConn
	frozen   bool
	deadline time.Time
	dlCh     chan struct{}

	readCh    chan packet
	closed    chan struct{}
	closeOnce sync.Once

	// DroppedOld counts packets that arrived on blackholed (old) sockets.
	DroppedOld atomic.Int64
	// DroppedFrozen counts packets dropped while frozen or on a reserved socket.
	DroppedFrozen atomic.Int64
}

// Listen binds the first socket (network "udp4" or "udp6", addr like "127.0.0.2:0").
func Listen(network, addr string) (*MovableConn, error) {
	uc, err := listen(network, addr)
	if err != nil {
		return nil, err
	}
	m := &MovableConn{first: uc.LocalAddr(), cur: uc, readCh: make(chan packet, 1024),
		closed: make(chan struct{}), dlCh: make(chan struct{})}
	m.all = append(m.all, uc)
	go m.readLoop(uc)
	return m, nil
}

func listen(network, addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP(network, ua)
}

func (m *MovableConn) readLoop(uc *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := uc.ReadFrom(buf)
		if err != nil {
			return
		}
		m.mu.Lock()
		live := uc == m.cur && !m.frozen
		old := uc != m.cur && uc != m.reserved
		m.mu.Unlock()
		if !live {
			if old {
				m.DroppedOld.Add(1)
			} else {
				m.DroppedFrozen.Add(1)
			}
			continue
		}
		p := packet{b: append([]byte(nil), buf[:n]...), from: from}
		select {
		case m.readCh <- p:
		case <-m.closed:
			return
		default: // receive buffer full: drop, as the kernel would
		}
	}
}

// Addr returns the address the service answers on now.
func (m *MovableConn) Addr() netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Reserve binds the socket of the next address (e.g. "127.0.0.3:0") and returns its address.
func (m *MovableConn) Reserve(network, addr string) (netip.AddrPort, error) {
	uc, err := listen(network, addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	m.mu.Lock()
	if m.reserved != nil {
		m.reserved.Close()
	}
	m.reserved = uc
	m.all = append(m.all, uc)
	m.mu.Unlock()
	go m.readLoop(uc)
	return uc.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

// Freeze drops every packet read or written from now on until Restore.
func (m *MovableConn) Freeze() {
	m.mu.Lock()
	m.frozen = true
	m.mu.Unlock()
	// packets already queued for the process are lost with the freeze
	for {
		select {
		case <-m.readCh:
			m.DroppedFrozen.Add(1)
		default:
			return
		}
	}
}

// Restore makes the reserved socket live, blackholes the old one and unfreezes.
func (m *MovableConn) Restore() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reserved == nil {
		return ErrNoReserved
	}
	m.cur, m.reserved = m.reserved, nil
	m.frozen = false
	return nil
}

// ReadFrom implements net.PacketConn.
func (m *MovableConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		m.mu.Lock()
		dl, dlCh := m.deadline, m.dlCh
		m.mu.Unlock()
		var timer <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timer = t.C
		}
		select {
		case p := <-m.readCh:
			return copy(b, p.b), p.from, nil
		case <-m.closed:
			return 0, nil, net.ErrClosed
		case <-timer:
			return 0, nil, os.ErrDeadlineExceeded
		case <-dlCh:
		}
	}
}

// WriteTo implements net.PacketConn; while frozen the packet is dropped.
func (m *MovableConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	m.mu.Lock()
	uc, frozen := m.cur, m.frozen
	m.mu.Unlock()
	if frozen {
		m.DroppedFrozen.Add(1)
		return len(b), nil
	}
	return uc.WriteTo(b, addr)
}

// Close closes every socket.
func (m *MovableConn) Close() error {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.mu.Lock()
		for _, uc := range m.all {
			uc.Close()
		}
		m.mu.Unlock()
	})
	return nil
}

// LocalAddr returns the first socket's address (the stable pod address).
func (m *MovableConn) LocalAddr() net.Addr { return m.first }

// SetDeadline sets the read deadline (writes never block).
func (m *MovableConn) SetDeadline(t time.Time) error { return m.SetReadDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (m *MovableConn) SetReadDeadline(t time.Time) error {
	m.mu.Lock()
	m.deadline = t
	close(m.dlCh)
	m.dlCh = make(chan struct{})
	m.mu.Unlock()
	return nil
}

// SetWriteDeadline implements net.PacketConn (writes never block).
func (m *MovableConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer is accepted and ignored (quic-go asks for it).
func (m *MovableConn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer is accepted and ignored.
func (m *MovableConn) SetWriteBuffer(int) error { return nil }
