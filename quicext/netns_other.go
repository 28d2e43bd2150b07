//go:build !linux

package quicext

type dialNetNS struct{}

func captureNetNS() *dialNetNS              { return &dialNetNS{} }
func (*dialNetNS) do(fn func() error) error { return fn() }
func (*dialNetNS) close()                   {}
