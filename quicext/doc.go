// Package quicext implements server-side QUIC connection migration on quic-go v0.65's public
// API. RFC 9000 section 9 lets only clients migrate; after a CRIU move of the server container
// to another node the server's public address changes, so the server tells its clients the new
// address (or a pool of candidates) on an extension stream, and each client validates the new
// path with PATH_CHALLENGE/PATH_RESPONSE (quic-go's Conn.AddPath, Path.Probe, Path.Switch,
// RFC 9000 section 8.2) before it switches. Five strategies: Explicit (proactive and reactive),
// Pool of Addresses, Symmetric and Synchronized Symmetric. The wire format is in
// docs/quicext-wire.md.
//
// Server: NewServer/Listen, then Prepare (before the freeze), Restored (after the restore) or
// Abort, driven by steerd through ServeControl on DefaultControlAddr. Client: Dial.
package quicext
