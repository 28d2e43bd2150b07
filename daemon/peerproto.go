package daemon

import (
	"context"
	"encoding/json"
	"io"

	"github.com/steerd/steerd/api"
)

// Peer operations. Each is one bidirectional QUIC stream on the peer channel (peer.go): the caller
// writes one JSON line peerRequest (for opImage followed by Size raw bytes and their 32-byte
// SHA-256), closes its send side, and reads one JSON line PeerReply. A large image file goes as
// several opImage parts at once, on several streams and connections (peerRequest.Offset).
const (
	opPrepareRestore = "prepare-restore" // create the pod namespace and image directory
	opImage          = "image"           // receive one image file
	opRestore        = "restore"         // restore the container, deliver the instance locally
	opRestored       = "restored"        // tell the restored service (quicext "restored")
	opRoute          = "route"           // set an instance local / remote / deleted
	opAbort          = "abort"           // undo everything of a migration on this node
	// opCommit (source -> destination, right after the source's commit point): unfence the
	// restored copy, the service runs there now.
	opCommit = "commit"
	// opOutcome (destination -> source, a restarted destination with a fenced pod): did the
	// migration commit? PeerReply.Outcome answers.
	opOutcome = "outcome"
)

// Outcomes of a migration as its source reports them (opOutcome, PeerReply.Outcome).
const (
	outcomeCommitted = "committed" // the service is the destination's: unfence and run it
	outcomeAborted   = "aborted"   // the source rolled back: remove the destination's copy
	outcomePending   = "pending"   // not decided yet, or the source does not know: stay fenced
)

// peerRequest is the header line of a peer operation.
type peerRequest struct {
	Op   string          `json:"op"`
	Body json.RawMessage `json:"body,omitempty"`
	// Image header (opImage): migration, relative file name, size in bytes of what follows.
	Migration string `json:"migration,omitempty"`
	Name      string `json:"name,omitempty"`
	Size      int64  `json:"size,omitempty"`
	// Part of a large image file (opImage, PeerClient.SendImage splits files of at least
	// partMin bytes): the Size bytes that follow are the file's bytes [Offset, Offset+Size) of
	// FileSize in all; the SHA-256 trailer and reply cover the part. FileSize 0: the whole file.
	Offset   int64 `json:"offset,omitempty"`
	FileSize int64 `json:"file_size,omitempty"`
}

// PeerReply is the answer to a peer operation.
type PeerReply struct {
	// Error is set when the operation failed on the peer (Node names the peer).
	Error *api.Error `json:"error,omitempty"`
	// Events are the peer's timeline entries of the operation (merged into the source's).
	Events []api.Event `json:"events,omitempty"`
	// SHA256 (hex) and Bytes are set for opImage: what the peer received.
	SHA256 string `json:"sha256,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
	// Outcome answers opOutcome: "committed", "aborted" or "pending".
	Outcome string `json:"outcome,omitempty"`
}

type commitReq struct {
	Migration string `json:"migration"`
	Service   string `json:"service"`
}

type outcomeReq struct {
	Migration string `json:"migration"`
	Service   string `json:"service"`
}

type prepareRestoreReq struct {
	Migration string        `json:"migration"`
	Source    string        `json:"source"`
	Service   ServiceDef    `json:"service"`
	Technique api.Technique `json:"technique"`
}

type restoreReq struct {
	Migration string        `json:"migration"`
	Service   string        `json:"service"`
	Technique api.Technique `json:"technique"`
	// PageServerPort (post-copy) is the TCP port of the source's lazy page server, at the
	// source's peer address.
	PageServerPort uint16 `json:"page_server_port,omitempty"`
}

type restoredReq struct {
	Migration string `json:"migration"`
	Service   string `json:"service"`
	Target    Target `json:"target"`
}

type routeReq struct {
	Instance uint64 `json:"instance"`
	// Kind is api.Local (the peer's pod for Service), api.Remote (to Peer), or "" to delete.
	Kind    api.RouteKind `json:"kind"`
	Service string        `json:"service,omitempty"`
	Peer    string        `json:"peer,omitempty"`
}

type abortReq struct {
	Migration string `json:"migration"`
	Service   string `json:"service"`
}

// Peer is another node's daemon as the source of a migration sees it. Errors that happened on the
// peer are *api.Error naming the peer; transport errors are plain errors.
type Peer interface {
	// Call runs one operation with a JSON-encodable request.
	Call(ctx context.Context, op string, req any) (*PeerReply, error)
	// SendImage streams one image file of a migration; progress (may be nil) is called with the
	// bytes sent so far (never concurrently). It returns once the peer verified the SHA-256 (of
	// every part, when it sends the file in parts). It is safe for concurrent use.
	SendImage(ctx context.Context, migration, name string, r io.Reader, size int64, progress func(sent int64)) error
}

// PeerDialer returns the Peer for a configured peer name.
type PeerDialer func(name string) (Peer, error)
