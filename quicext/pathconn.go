package quicext

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// pathConn is the client's net.PacketConn for one path. quic-go's client migration
// (Conn.AddPath) only changes the local side of a path and always sends to the connection's
// original remote address, so pathConn rewrites the destination of every WriteTo to the
// server address of its path and reports every ReadFrom as coming from the original remote
// address (QUIC packet protection, not the source address, authenticates the packets).
// It also records what the silence detector needs and implements the Synchronized Symmetric hold.
type pathConn struct {
	pc       net.PacketConn
	dst      atomic.Pointer[net.UDPAddr]
	reportAs net.Addr
	epoch    time.Time

	lastRead        atomic.Int64 // ns since epoch
	firstUnanswered atomic.Int64 // ns since epoch of the first write after the last read, 0 none
	writesSinceRead atomic.Int64

	mu      sync.Mutex
	holdCh  chan struct{} // non-nil while held; closed on release
	dropOut bool          // release drops the held writes (the path is dead)
	holdAt  time.Time     // hold applies to writes from this time on

	// A retired pathConn has closed its socket but still looks open to quic-go: quic-go v0.65
	// keeps a connection registered with every Transport it used until the connection closes
	// (connIDGenerator never removes a Transport), and closing that Transport, or letting its
	// read loop see an error, would destroy the connection (Transport.close). So reads block
	// until Close or the read deadline, and writes are dropped.
	retired   atomic.Bool
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	deadline  time.Time     // read deadline while retired
	kick      chan struct{} // closed and replaced by SetReadDeadline
}

func newPathConn(pc net.PacketConn, dst *net.UDPAddr, reportAs net.Addr) *pathConn {
	p := &pathConn{pc: pc, reportAs: reportAs, epoch: time.Now(), done: make(chan struct{}), kick: make(chan struct{})}
	p.dst.Store(dst)
	return p
}

func (p *pathConn) now() int64 { return int64(time.Since(p.epoch)) + 1 }

// retire closes the socket (releases its file descriptor and port) and keeps the pathConn
// open for quic-go; call it only for a path the connection will never send on again.
func (p *pathConn) retire() {
	if p.retired.CompareAndSwap(false, true) {
		p.release(true)
		p.pc.Close()
	}
}

// readRetired blocks until Close (net.ErrClosed) or the read deadline (os.ErrDeadlineExceeded,
// which quic-go's Transport treats as temporary; Transport.Close uses it to stop its reader).
func (p *pathConn) readRetired() (int, net.Addr, error) {
	for {
		p.mu.Lock()
		dl, kick := p.deadline, p.kick
		p.mu.Unlock()
		var timer <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timer = t.C
		}
		select {
		case <-p.done:
			if t != nil {
				t.Stop()
			}
			return 0, nil, net.ErrClosed
		case <-kick:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
	}
}

func (p *pathConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if p.retired.Load() {
		return p.readRetired()
	}
	n, _, err := p.pc.ReadFrom(b)
	if err != nil && p.retired.Load() {
		return p.readRetired()
	}
	if err == nil {
		p.lastRead.Store(p.now())
		p.firstUnanswered.Store(0)
		p.writesSinceRead.Store(0)
	}
	return n, p.reportAs, err
}

func (p *pathConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	if p.retired.Load() {
		return len(b), nil
	}
	p.mu.Lock()
	ch, at := p.holdCh, p.holdAt
	p.mu.Unlock()
	if ch != nil && time.Now().After(at) {
		<-ch
		p.mu.Lock()
		drop := p.dropOut
		p.mu.Unlock()
		if drop {
			return len(b), nil
		}
	}
	p.firstUnanswered.CompareAndSwap(0, p.now())
	p.writesSinceRead.Add(1)
	return p.pc.WriteTo(b, p.dst.Load())
}

// silentFor returns how long writes have gone unanswered (0 if fewer than two writes since
// the last read: a lone ACK-only packet elicits no answer).
func (p *pathConn) silentFor() time.Duration {
	if p.writesSinceRead.Load() < 2 {
		return 0
	}
	f := p.firstUnanswered.Load()
	if f == 0 {
		return 0
	}
	return time.Duration(p.now() - f)
}

// hold makes writes issued after delay block until release or timeout.
func (p *pathConn) hold(delay, timeout time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holdCh != nil {
		return
	}
	ch := make(chan struct{})
	p.holdCh, p.holdAt, p.dropOut = ch, time.Now().Add(delay), false
	time.AfterFunc(timeout, func() { p.release(false) })
}

// release ends a hold; drop discards the writes that were held.
func (p *pathConn) release(drop bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holdCh == nil {
		return
	}
	p.dropOut = drop
	close(p.holdCh)
	p.holdCh = nil
}

func (p *pathConn) Close() error {
	p.release(true)
	p.closeOnce.Do(func() { close(p.done) })
	if p.retired.Load() {
		return nil
	}
	return p.pc.Close()
}
func (p *pathConn) LocalAddr() net.Addr { return p.pc.LocalAddr() }
func (p *pathConn) SetDeadline(t time.Time) error {
	p.SetWriteDeadline(t)
	return p.SetReadDeadline(t)
}

func (p *pathConn) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	close(p.kick)
	p.kick = make(chan struct{})
	p.mu.Unlock()
	if p.retired.Load() {
		return nil
	}
	return p.pc.SetReadDeadline(t)
}

func (p *pathConn) SetWriteDeadline(t time.Time) error {
	if p.retired.Load() {
		return nil
	}
	return p.pc.SetWriteDeadline(t)
}

// SetReadBuffer passes the receive buffer size to the socket (quic-go asks for it).
func (p *pathConn) SetReadBuffer(n int) error {
	if s, ok := p.pc.(interface{ SetReadBuffer(int) error }); ok {
		return s.SetReadBuffer(n)
	}
	return nil
}

// SetWriteBuffer passes the send buffer size to the socket.
func (p *pathConn) SetWriteBuffer(n int) error {
	if s, ok := p.pc.(interface{ SetWriteBuffer(int) error }); ok {
		return s.SetWriteBuffer(n)
	}
	return nil
}
