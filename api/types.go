// Package api holds the request and response types of steerd's local control API and a Go client
// for it. The API is HTTP/1.1 with JSON bodies over a unix stream socket (mode 0600, by default
// /run/steerd/<node>/control.sock); steerctl is its main user. Every error response has the body
// {"error": Error} and a 4xx/5xx status.
//
//	GET  /v1/status                  -> Status
//	GET  /v1/routes                  -> []Route
//	POST /v1/services      RunRequest -> ServiceStatus
//	POST /v1/migrations    MigrateRequest -> Migration (when Wait: after it ended)
//	GET  /v1/migrations              -> []Migration (without events)
//	GET  /v1/migrations/{id}         -> Migration
//	GET  /v1/events?migration={id}   -> []Event (every migration when id is empty)
package api

import (
	"fmt"
	"strings"
	"time"
)

// Version prefixes every path of the control API.
const Version = "/v1"

// Technique names a container migration technique (package migrate).
type Technique string

// Techniques (CRIU documentation, "Live migration", "Lazy migration"):
const (
	// Cold: freeze, dump everything, transfer, restore.
	Cold Technique = "cold"
	// PreCopy: iterative pre-dumps while the container runs, then a final dump of the dirty pages.
	PreCopy Technique = "pre-copy"
	// PostCopy: dump without memory pages, restore at once, pages fetched lazily (lazy pages).
	PostCopy Technique = "post-copy"
	// Hybrid: one pre-dump, then a post-copy final step.
	Hybrid Technique = "hybrid"
)

// Techniques lists every technique in a stable order.
var Techniques = []Technique{Cold, PreCopy, PostCopy, Hybrid}

// Strategies lists the server-migration strategies of the quicext control endpoint by name.
var Strategies = []string{"symmetric", "sync-symmetric", "explicit-proactive", "explicit-reactive", "pool"}

// ParseTechnique checks a technique name.
func ParseTechnique(s string) (Technique, error) {
	for _, t := range Techniques {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("parse technique %q: want one of %s", s, joinT(Techniques))
}

// ParseStrategy checks a strategy name ("explicit" is accepted for explicit-proactive).
func ParseStrategy(s string) (string, error) {
	if s == "explicit" {
		return "explicit-proactive", nil
	}
	for _, n := range Strategies {
		if n == s {
			return s, nil
		}
	}
	return "", fmt.Errorf("parse strategy %q: want one of %s", s, strings.Join(Strategies, ", "))
}

func joinT(ts []Technique) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}

// Phase names a step of a migration. The source node runs them in this order; a failure in any
// of them rolls the migration back (RolledBack).
type Phase string

// Phases of a migration, in order.
const (
	PhaseValidate Phase = "validate"      // check service, peer, strategy, technique
	PhasePrepare  Phase = "prepare"       // quicext "prepare" in the pod netns; wait for readiness
	PhaseDest     Phase = "prepare-dest"  // destination creates the pod namespace
	PhaseCheckpt  Phase = "checkpoint"    // freeze + dump (CRIU through runc), image sent to the peer
	PhaseRestore  Phase = "restore"       // destination restores the container, delivers locally
	PhaseRoute    Phase = "route"         // source forwards the instance to the destination
	PhaseRestored Phase = "restored"      // quicext "restored" on the destination
	PhaseComplete Phase = "complete"      // source finishes (lazy pages) and removes its container
	PhaseDrain    Phase = "drain"         // source forwards until the instance is quiet
	PhaseRollback Phase = "rollback"      // undo after a failure
	PhaseTransfer Phase = "transfer"      // sub-phase: one image file (progress events)
	PhaseRun      Phase = "run"           // starting a service (not a migration)
	PhasePeer     Phase = "peer"          // peer channel (dial, handshake)
	PhaseControl  Phase = "control"       // control API itself
	PhaseEngine   Phase = "engine-report" // sub-phase times reported by the engine (freeze, dump, ...)
)

// Error is the error body of the control API and the error of a failed migration. It names the
// node where the error happened, the phase and the cause.
type Error struct {
	Node  string `json:"node"`
	Phase Phase  `json:"phase"`
	Cause string `json:"cause"`
	// Code is the HTTP status of the response (0 inside a Migration).
	Code int `json:"code,omitempty"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("node %s: phase %s: %s", e.Node, e.Phase, e.Cause)
}

// Result of a migration.
type Result string

// Results.
const (
	Running    Result = "running"
	Succeeded  Result = "succeeded"
	RolledBack Result = "rolled-back" // failed; the service runs on the source again
	Failed     Result = "failed"      // failed and the rollback failed too: needs an operator
)

// EventKind tells what an Event marks.
type EventKind string

// Event kinds.
const (
	Start    EventKind = "start"
	End      EventKind = "end"
	Progress EventKind = "progress"
	Info     EventKind = "info"
	Fail     EventKind = "error"
)

// Event is one entry of a migration's timeline.
type Event struct {
	Migration string    `json:"migration"`
	Node      string    `json:"node"`
	Phase     Phase     `json:"phase"`
	Kind      EventKind `json:"kind"`
	Time      time.Time `json:"time"`
	// Duration is set on End events: time since the phase's Start.
	Duration time.Duration `json:"duration_ns,omitempty"`
	// Bytes and Total are set on transfer Progress events (bytes sent so far, file size).
	Bytes int64 `json:"bytes,omitempty"`
	Total int64 `json:"total,omitempty"`
	// Detail is a human-readable note (an error on Fail events).
	Detail string `json:"detail,omitempty"`
}

// RunRequest asks a node to start a service container. The service must be defined in the node's
// configuration (addresses, port, instance ID).
type RunRequest struct {
	Service string `json:"service"`
	// Bundle is the OCI bundle directory (config.json + rootfs) of the container; if empty, the
	// service's bundle from the configuration.
	Bundle string `json:"bundle,omitempty"`
	// Args overrides the container's process arguments when not empty.
	Args []string `json:"args,omitempty"`
}

// MigrateRequest asks the node running Service to move it to To.
type MigrateRequest struct {
	Service   string    `json:"service"`
	To        string    `json:"to"`
	Strategy  string    `json:"strategy"`
	Technique Technique `json:"technique"`
	// PrepareTimeout bounds the wait for the service's readiness (0: 2 s).
	PrepareTimeout time.Duration `json:"prepare_timeout_ns,omitempty"`
	// DrainPeriod: the source stops forwarding once no packet for the instance arrived there for
	// this long (0: 2 s). DrainTimeout bounds the whole drain (0: 30 s).
	DrainPeriod  time.Duration `json:"drain_period_ns,omitempty"`
	DrainTimeout time.Duration `json:"drain_timeout_ns,omitempty"`
	// Wait makes the request return when the migration ended; otherwise it returns once started.
	Wait bool `json:"wait,omitempty"`
}

// Migration is the state of one migration.
type Migration struct {
	ID        string    `json:"id"`
	Service   string    `json:"service"`
	Instance  uint64    `json:"instance"`
	From      string    `json:"from"`
	To        string    `json:"to"`
	Strategy  string    `json:"strategy"`
	Technique Technique `json:"technique"`
	Result    Result    `json:"result"`
	// Phase is the current phase, or the one that failed.
	Phase   Phase     `json:"phase"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// Downtime is the time from the start of the checkpoint to the end of the restore (ns).
	Downtime time.Duration `json:"downtime_ns,omitempty"`
	// Bytes is the image size moved to the destination.
	Bytes int64 `json:"bytes"`
	// Ready, NotReady, Unsupported count the QUIC connections by their readiness after prepare.
	Ready       int     `json:"ready"`
	NotReady    int     `json:"not_ready"`
	Unsupported int     `json:"unsupported"`
	Error       *Error  `json:"error,omitempty"`
	Events      []Event `json:"events,omitempty"`
}

// ServiceStatus is one service as a node sees it.
type ServiceStatus struct {
	Name     string `json:"name"`
	Instance uint64 `json:"instance"`
	Port     uint16 `json:"port"`
	PodIPv4  string `json:"pod_ipv4,omitempty"`
	PodIPv6  string `json:"pod_ipv6,omitempty"`
	// State: "stopped", "running", "migrating", "restoring" (destination), "remote" (moved to Peer).
	State string `json:"state"`
	PodNS string `json:"pod_ns,omitempty"`
	Peer  string `json:"peer,omitempty"`
}

// PeerStatus is one configured peer.
type PeerStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// Connected reports an open peer-channel connection; LastError the last dial error.
	Connected bool   `json:"connected"`
	LastError string `json:"last_error,omitempty"`
}

// Status is a node's overview.
type Status struct {
	Node       string          `json:"node"`
	Uplink     string          `json:"uplink"`
	IPv4       string          `json:"ipv4,omitempty"`
	IPv6       string          `json:"ipv6,omitempty"`
	PeerListen string          `json:"peer_listen"`
	Datapath   string          `json:"datapath"`
	Services   []ServiceStatus `json:"services"`
	Peers      []PeerStatus    `json:"peers"`
	Migrations int             `json:"migrations"`
	Started    time.Time       `json:"started"`
	// Counters are the datapath's counters by reason (packets).
	Counters map[string]uint64 `json:"counters,omitempty"`
}

// RouteKind is where a node sends an instance's packets.
type RouteKind string

// Route kinds.
const (
	Local  RouteKind = "local"  // DNAT to the pod on this node
	Remote RouteKind = "remote" // encapsulate to Peer
)

// Route is one datapath entry of a node.
type Route struct {
	Instance uint64    `json:"instance"`
	Service  string    `json:"service,omitempty"`
	Kind     RouteKind `json:"kind"`
	Peer     string    `json:"peer,omitempty"`
	// Packets is the number of packets the datapath steered for the instance; LastSeen the time of
	// the latest one (zero if none or unknown).
	Packets  uint64    `json:"packets"`
	LastSeen time.Time `json:"last_seen,omitzero"`
}
