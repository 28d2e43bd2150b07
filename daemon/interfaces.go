// Package daemon is the node daemon of steerd (cmd/steerd): it owns a node's datapath, pod
// namespaces and service containers, serves the local control API (package api) on a unix socket
// and the peer API to other nodes over QUIC with mutual TLS (package pki), and runs migrations.
//
// The daemon talks to the rest of the system through small interfaces declared here, so that the
// migration state machine (migration.go) is tested with fakes and the real packages are wired in
// by adapters (wire.go):
//
//	Datapath       -> package datapath (XDP steering by QUIC-LB server ID)
//	Engine         -> package migrate (runc + CRIU checkpoint/restore)
//	ServiceControl -> the quicext control endpoint inside the pod netns (@steerd-quicext)
//	Pods           -> package pod (pod network namespaces with stable addresses)
//	Peer           -> another node's daemon over the peer channel (peer.go)
package daemon

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/steerd/steerd/api"
	"github.com/steerd/steerd/pod"
)

// Sentinel errors callers test with errors.Is.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrUnknownPeer    = errors.New("unknown peer")
	ErrBusy           = errors.New("service is busy with another operation")
	ErrNotRunning     = errors.New("service is not running on this node")
	ErrUnknownMig     = errors.New("unknown migration")
	ErrBadRequest     = errors.New("bad request")
	ErrChecksum       = errors.New("image checksum mismatch")
	ErrPrepareTimeout = errors.New("service did not become ready before the prepare timeout")
	// ErrNoSpace: an incoming image file is larger than the free space of the destination's
	// image directory (checked when its first part arrives).
	ErrNoSpace = errors.New("not enough free space for the image")
)

// LocalTarget is where a node delivers an instance it hosts: the pod behind a host-side veth.
type LocalTarget struct {
	// HostIfindex is the ifindex of the pod's host-side veth in the node netns.
	HostIfindex int
	// Pod4, Pod6 are the pod addresses (either may be invalid); PodPort the UDP port the service
	// listens on inside the pod (host byte order).
	Pod4, Pod6 netip.Addr
	PodPort    uint16
}

// InstanceStats are the datapath's per-instance counters on this node.
type InstanceStats struct {
	// Packets steered for the instance since its entry was set.
	Packets uint64
	// LastSeen is the wall-clock time of the latest such packet (zero: none).
	LastSeen time.Time
}

// Datapath is the node's XDP datapath as the daemon uses it. Instance IDs are QUIC-LB server IDs
// read as big-endian integers (docs/architecture.md, "Connection IDs").
type Datapath interface {
	// SetLocal makes the node deliver instance to a local pod (DNAT public -> pod address).
	SetLocal(instance uint64, t LocalTarget) error
	// SetRemote makes the node encapsulate instance's packets to the named peer node.
	SetRemote(instance uint64, peer string) error
	// Delete removes the instance's entry; unknown instances then take XDP_PASS.
	Delete(instance uint64) error
	// InstanceStats returns the instance's counters (zero values for an unknown instance).
	InstanceStats(instance uint64) (InstanceStats, error)
	// Counters returns the datapath's global counters by reason name (packets).
	Counters() (map[string]uint64, error)
	// Close releases the datapath; a pinned XDP datapath keeps steering (Config.PinRoot) unless
	// Config.DetachOnExit asks for a teardown.
	Close() error
}

// ContainerSpec describes a service container to start (runc, OCI runtime spec).
type ContainerSpec struct {
	// Name is the container ID (the service name).
	Name string
	// Bundle is the OCI bundle directory; Args override its process arguments when not empty.
	Bundle string
	Args   []string
	// NetNSPath is the bind-mount path of the pod network namespace the container joins ("" when
	// the engine creates the pod itself, see PodEngine).
	NetNSPath string
	// IPv4, IPv6 are the stable pod addresses (either may be invalid); a PodEngine creates the pod
	// with them.
	IPv4, IPv6 netip.Addr
}

// ImageTransport moves checkpoint image files to the destination node. The engine calls it for
// every file it wants on the destination, possibly several files at once (sendDir keeps up to 4
// in flight), so implementations must be safe for concurrent use; the destination stores the
// files under its image directory for the migration, preserving the relative name.
type ImageTransport interface {
	// SendFile streams size bytes from r as the file name (relative, "/"-separated). It returns
	// after the destination checked the SHA-256 of what it received.
	SendFile(ctx context.Context, name string, r io.Reader, size int64) error
}

// PhaseTime is one sub-phase an engine reports (e.g. "pre-dump-1", "freeze", "dump").
type PhaseTime struct {
	Name       string
	Start, End time.Time
	Bytes      int64
}

// EngineReport is what an engine measured for one checkpoint or restore.
type EngineReport struct {
	Phases []PhaseTime
	// Bytes is the image size the engine produced or consumed.
	Bytes int64
}

// CheckpointRequest asks the source engine to checkpoint a service and send its image.
type CheckpointRequest struct {
	Migration string
	Service   string
	Technique api.Technique
	// ImageDir is a fresh local directory for the image.
	ImageDir  string
	Transport ImageTransport
	// BeforeFreeze runs once just before the container is frozen for the final dump (after any
	// pre-dumps). An error aborts the checkpoint with the container still running.
	BeforeFreeze func(ctx context.Context) error
	// FreezeAtOnce, called after BeforeFreeze, asks a technique that freezes late to pause the
	// container at once instead (post-copy: `runc checkpoint --lazy-pages` lets CRIU freeze it only
	// after runc and CRIU start-up, 250-630 ms measured, while clients holding since the prepare
	// already wait). Nil or false: the technique freezes when it freezes.
	FreezeAtOnce func() bool
	// PageServer (post-copy) is the address and TCP port of this node where CRIU serves the lazy
	// pages until the destination has pulled them all.
	PageServer netip.AddrPort
}

// RestoreRequest asks the destination engine to restore a service from an image.
type RestoreRequest struct {
	Migration string
	Service   string
	Technique api.Technique
	// ImageDir holds the files received through ImageTransport.
	ImageDir string
	// NetNSPath is the pod namespace prepared for the container ("" for a PodEngine, which
	// creates it); Bundle its OCI bundle.
	NetNSPath string
	Bundle    string
	// Source is the node the image came from (post-copy: where lazy pages are served).
	Source string
	// PageServer (post-copy) is the source node's lazy page server (address and TCP port).
	PageServer netip.AddrPort
}

// Engine runs, checkpoints and restores service containers on one node.
type Engine interface {
	// Run starts a container.
	Run(ctx context.Context, spec ContainerSpec) error
	// Checkpoint freezes and dumps a running container and sends its image through the request's
	// transport. On error the container keeps running, or Resume brings it back.
	Checkpoint(ctx context.Context, req CheckpointRequest) (EngineReport, error)
	// Resume puts a service back into the running state on this node after a failed migration
	// (thaw it, or restore its local image if the dump stopped it). It is a no-op for a running one.
	Resume(ctx context.Context, service string) error
	// Complete ends a successful migration on the source: it waits for any lazy-page transfer
	// and removes the container.
	Complete(ctx context.Context, service string) error
	// Restore restores a container from an image (destination side).
	Restore(ctx context.Context, req RestoreRequest) (EngineReport, error)
	// Remove stops and deletes a container if it exists (destination-side abort).
	Remove(ctx context.Context, service string) error
}

// PodPreparer is a PodEngine that can create the pod namespace of an incoming service at
// prepare-restore, before the source freezes: the freeze then does not include pod creation, and
// the daemon attaches the datapath's pod programs and sets the instance's local route before the
// restore, so the restored service's first packet is already SNATed.
type PodPreparer interface {
	PodEngine
	// PreparePod creates the pod of service with the pod addresses; Restore takes it, Remove
	// deletes it when no restore comes.
	PreparePod(service string, v4, v6 netip.Addr) (*pod.Pod, error)
}

// Target is the pair of public addresses a service is reachable at on one node (IPv4 and IPv6
// address with the service's public port); either may be invalid.
type Target struct {
	IPv4 netip.AddrPort `json:"ipv4"`
	IPv6 netip.AddrPort `json:"ipv6"`
}

// Readiness is the service's answer to prepare: QUIC connections by state.
type Readiness struct {
	Ready, NotReady, Unsupported int
	// Holding counts the connections whose client holds its sends from the announcement on
	// (Synchronized Symmetric, quicext.Readiness.Holding): their gap starts at prepare, so the
	// service should freeze at once (CheckpointRequest.FreezeAtOnce).
	Holding int
	// Elapsed is how long the service took to get ready.
	Elapsed time.Duration
}

// ServiceControl reaches the quicext control endpoint of a service inside its pod namespace.
type ServiceControl interface {
	// Prepare announces a migration to target with strategy; it returns when the service reports
	// readiness or when timeout (or ctx) ends (error wrapping ErrPrepareTimeout).
	Prepare(ctx context.Context, podNS string, target Target, strategy string, timeout time.Duration) (Readiness, error)
	// Restored tells the restored service that it now runs at target.
	Restored(ctx context.Context, podNS string, target Target) error
	// Abort cancels a prepared migration.
	Abort(ctx context.Context, podNS string) error
}

// Pods creates and removes pod network namespaces.
type Pods interface {
	Create(spec pod.Spec) (*pod.Pod, error)
	Delete(p *pod.Pod) error
}

// RealPods implements Pods with package pod.
type RealPods struct{}

// Create calls pod.Create.
func (RealPods) Create(spec pod.Spec) (*pod.Pod, error) { return pod.Create(spec) }

// Delete calls (*pod.Pod).Delete.
func (RealPods) Delete(p *pod.Pod) error { return p.Delete() }
