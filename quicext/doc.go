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
//
// HTTP/3: ServeHTTP3 serves an http3.Server's handler on a Server; DialHTTP3 and HTTP3Transport
// are the client side. They use the ALPN protocol NextProtoH3Ext ("h3+qx"), under which each
// side's extension stream is its first unidirectional stream (IDs 0x2 and 0x3) and every other
// stream goes unread to quic-go's HTTP/3; plain "h3" clients are served without the extension.
package quicext
