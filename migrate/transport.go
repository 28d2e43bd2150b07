package migrate

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/steerd/steerd/internal/nsutil"
)

// ErrChecksum is returned (by both ends) when the SHA-256 of a received image stream does not
// match the sender's.
var ErrChecksum = errors.New("image checksum mismatch")

// ProgressFunc reports image transfer progress: done and total are bytes of file content.
type ProgressFunc func(done, total int64)

// Transport moves one image directory from the source node to the destination node. Send runs on
// the source, Receive on the destination; they run at the same time and each returns once the
// destination has verified the stream (or failed). A daemon implements it over its mTLS peer
// channel; TCPTransport is the plain implementation for tests.
type Transport interface {
	// Send streams dir and returns the number of bytes sent on the wire.
	Send(ctx context.Context, dir string, progress ProgressFunc) (int64, error)
	// Receive writes the stream into dir (created, must not exist) and returns the bytes received.
	// It returns an error wrapping ErrChecksum when the stream fails its integrity check; dir is then
	// removed.
	Receive(ctx context.Context, dir string, progress ProgressFunc) (int64, error)
}

// Wire format of an image stream (all integers big-endian):
//
//	magic   [8]byte  "STDRIMG1"
//	total   uint64   sum of the sizes of the regular files (for progress)
//	tar     POSIX ustar/PAX stream of the directory (regular files and directories only)
//	sum     [32]byte SHA-256 over magic, total and tar
//
// then the sender half-closes, and the receiver answers one byte: 1 = verified and written,
// 0 = failed, followed by an error text until EOF.
const streamMagic = "STDRIMG1"

// WriteImage writes dir to w in the wire format above and returns the bytes written.
func WriteImage(ctx context.Context, w io.Writer, dir string, progress ProgressFunc) (int64, error) {
	var files []string
	var total int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			total += fi.Size()
		} else if !d.IsDir() {
			return fmt.Errorf("%s: not a regular file or directory", p)
		}
		if p != dir {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("send image: %w", err)
	}
	sort.Strings(files)
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	hdr := make([]byte, 16)
	copy(hdr, streamMagic)
	binary.BigEndian.PutUint64(hdr[8:], uint64(total))
	if _, err := cw.Write(hdr); err != nil {
		return cw.n, fmt.Errorf("send image: %w", err)
	}
	tw := tar.NewWriter(cw)
	var done int64
	buf := make([]byte, 256<<10)
	for _, p := range files {
		if err := ctx.Err(); err != nil {
			return cw.n, fmt.Errorf("send image: %w", err)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return cw.n, fmt.Errorf("send image: %w", err)
		}
		th, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return cw.n, fmt.Errorf("send image: %w", err)
		}
		rel, _ := filepath.Rel(dir, p)
		th.Name = filepath.ToSlash(rel)
		th.Uname, th.Gname, th.ModTime = "", "", time.Time{}
		if err := tw.WriteHeader(th); err != nil {
			return cw.n, fmt.Errorf("send image: %w", err)
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return cw.n, fmt.Errorf("send image: %w", err)
			}
			for {
				n, rerr := f.Read(buf)
				if n > 0 {
					if _, err := tw.Write(buf[:n]); err != nil {
						f.Close()
						return cw.n, fmt.Errorf("send image: %w", err)
					}
					done += int64(n)
					if progress != nil {
						progress(done, total)
					}
				}
				if rerr == io.EOF {
					break
				}
				if rerr != nil {
					f.Close()
					return cw.n, fmt.Errorf("send image: %w", rerr)
				}
			}
			f.Close()
		}
	}
	if err := tw.Close(); err != nil {
		return cw.n, fmt.Errorf("send image: %w", err)
	}
	n, err := w.Write(h.Sum(nil))
	return cw.n + int64(n), err
}

// ReadImage reads a stream in the wire format from r (until EOF) into dir, which must not exist.
// It verifies the SHA-256 trailer; on any error it removes dir. A corrupted stream gives an error
// wrapping ErrChecksum even when the damage also breaks the tar framing.
func ReadImage(ctx context.Context, r io.Reader, dir string, progress ProgressFunc) (_ int64, err error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return 0, fmt.Errorf("receive image: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	h := sha256.New()
	hb := &holdback{r: r, h: h}
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(hb, hdr); err != nil {
		return hb.n, fmt.Errorf("receive image: header: %w", err)
	}
	if string(hdr[:8]) != streamMagic {
		return hb.n, fmt.Errorf("receive image: bad magic %q: %w", hdr[:8], ErrChecksum)
	}
	total := int64(binary.BigEndian.Uint64(hdr[8:]))
	terr := extract(ctx, tar.NewReader(hb), dir, total, progress)
	// Drain what is left so the trailer is known even when extraction failed.
	if _, err := io.Copy(io.Discard, hb); err != nil {
		return hb.n, fmt.Errorf("receive image: %w", errors.Join(terr, err))
	}
	if len(hb.tail) != sha256.Size || !bytes.Equal(hb.tail, h.Sum(nil)) {
		return hb.n, fmt.Errorf("receive image: %w (sha-256 of %d bytes)", errors.Join(ErrChecksum, terr), hb.n)
	}
	if terr != nil {
		return hb.n, fmt.Errorf("receive image: %w", terr)
	}
	return hb.n, nil
}

func extract(ctx context.Context, tr *tar.Reader, dir string, total int64, progress ProgressFunc) error {
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		th, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(filepath.FromSlash(th.Name))
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("unsafe path %q", th.Name)
		}
		p := filepath.Join(dir, name)
		switch th.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(th.Mode)&0o777)
			if err != nil {
				return err
			}
			n, err := io.Copy(f, tr)
			done += n
			if progress != nil {
				progress(done, total)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("unsupported tar entry %q type %c", th.Name, th.Typeflag)
		}
	}
}

// holdback reads r, keeping the last sha256.Size bytes out of what it returns (the trailer), and
// hashes what it returns.
type holdback struct {
	r    io.Reader
	h    hash.Hash
	tail []byte
	n    int64
	eof  bool
}

func (b *holdback) Read(p []byte) (int, error) {
	for {
		if len(b.tail) > sha256.Size {
			k := copy(p, b.tail[:len(b.tail)-sha256.Size])
			b.h.Write(p[:k])
			b.tail = b.tail[k:]
			return k, nil
		}
		if b.eof {
			return 0, io.EOF
		}
		buf := make([]byte, max(len(p), 32<<10))
		k, err := b.r.Read(buf)
		b.n += int64(k)
		b.tail = append(b.tail, buf[:k]...)
		if err == io.EOF {
			b.eof = true
		} else if err != nil {
			return 0, err
		}
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// TCPTransport sends an image over one TCP connection from the source node's namespace to a
// listener in the destination node's namespace (plain TCP, for tests; no authentication).
type TCPTransport struct {
	// SenderNS is the source node's network namespace ("" = the caller's).
	SenderNS string
	// Filter, when set, wraps the sender's connection writer (fault injection in tests).
	Filter func(io.Writer) io.Writer

	ln   *net.TCPListener
	addr netip.AddrPort
}

// ListenTCP opens the receiving end: a TCP listener on addr inside the destination node's
// namespace receiverNS. Close it when done.
func ListenTCP(receiverNS string, addr netip.AddrPort) (*TCPTransport, error) {
	var ln *net.TCPListener
	err := nsutil.Do(receiverNS, func() (err error) {
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen image transport %s in %s: %w", addr, receiverNS, err)
	}
	return &TCPTransport{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort()}, nil
}

// Addr returns the listening address.
func (t *TCPTransport) Addr() netip.AddrPort { return t.addr }

// Close closes the listener.
func (t *TCPTransport) Close() error { return t.ln.Close() }

// Send dials the listener from SenderNS, writes the image and waits for the receiver's verdict.
func (t *TCPTransport) Send(ctx context.Context, dir string, progress ProgressFunc) (int64, error) {
	var conn net.Conn
	err := nsutil.Do(t.SenderNS, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err = d.DialContext(ctx, "tcp", t.addr.String())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("send image: dial %s: %w", t.addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	var w io.Writer = conn
	if t.Filter != nil {
		w = t.Filter(conn)
	}
	n, err := WriteImage(ctx, w, dir, progress)
	if err != nil {
		return n, err
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return n, fmt.Errorf("send image: %w", err)
	}
	return n, readVerdict(conn)
}

// Receive accepts one connection and reads the image into dir.
func (t *TCPTransport) Receive(ctx context.Context, dir string, progress ProgressFunc) (int64, error) {
	stop := context.AfterFunc(ctx, func() { t.ln.SetDeadline(time.Now()) })
	conn, err := t.ln.AcceptTCP()
	stop()
	if err != nil {
		return 0, fmt.Errorf("receive image: accept: %w", err)
	}
	defer conn.Close()
	stop = context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	n, err := ReadImage(ctx, conn, dir, progress)
	writeVerdict(conn, err)
	return n, err
}

func writeVerdict(w io.Writer, err error) {
	if err == nil {
		w.Write([]byte{1})
		return
	}
	msg := err.Error()
	if errors.Is(err, ErrChecksum) {
		msg = "checksum: " + msg
	}
	w.Write(append([]byte{0}, msg...))
}

func readVerdict(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil && len(b) == 0 {
		return fmt.Errorf("send image: no verdict from receiver: %w", err)
	}
	if len(b) == 0 {
		return errors.New("send image: receiver closed without a verdict")
	}
	if b[0] == 1 {
		return nil
	}
	if strings.HasPrefix(string(b[1:]), "checksum: ") {
		return fmt.Errorf("send image: receiver: %w: %s", ErrChecksum, b[11:])
	}
	return fmt.Errorf("send image: receiver: %s", b[1:])
}
