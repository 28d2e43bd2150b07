package dpbench

import "fmt"

// MapSizes are the numbers of instances (and clients-LRU entries) for the per-packet cost table.
var MapSizes = []int{1_000, 100_000, 1_000_000}

// PerPacketCost is the HOOK for the per-packet cost of xdp_steer with n instances and n clients in
// its maps: load the datapath without an uplink (datapath.Open with Config.Uplink ""), fill
// Maps().Instances and Maps().Clients with n entries each, then time single BPF_PROG_TEST_RUN
// calls (cilium/ebpf Program.Benchmark with repeat 1: the program rewrites its packet) on a
// forwarded and a locally delivered packet whose DCID names one of the n instances, with
// ingress_ifindex set to an uplink in a namespace as datapath/bench_test.go does (kernelRun).
// It returns the mean ns per packet. Not implemented yet: the datapath package keeps that
// test-run context (xdp_md with ingress_ifindex) in its tests.
func PerPacketCost(n int) (nsPerPacket float64, err error) {
	return 0, fmt.Errorf("%w: per-packet cost with %d map entries needs a prog-run API from datapath/ (hook: bench/internal/dpbench/progbench.go PerPacketCost)", ErrNotReady, n)
}
