package service

import (
	"net"

	"github.com/steerd/steerd/quicext"
)

// ServeControl serves the quicext control protocol (quicext.ControlRequest, one JSON line per
// connection) for all of the service's quicext servers (one per pod address) on l until l is
// closed, and returns the Accept error; see quicext.ServeControlGroup for how requests fan out.
func (s *Service) ServeControl(l net.Listener) error {
	return quicext.ServeControlGroup(l, s.Servers(), quicext.ControlOptions{})
}
