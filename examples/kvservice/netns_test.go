package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/steerd/steerd/examples/loadclient/load"
	"github.com/steerd/steerd/quicext"
	"github.com/steerd/steerd/tests/netns"
)

// TestNetnsPod runs the binary inside a pod network namespace of a testbed node (through
// `ip netns exec`) on the pod's IPv4 and IPv6 addresses, with the default abstract control
// socket, which is reachable only from inside the pod namespace; the load client runs
// in-process inside the client namespace, so its packets cross client -> router -> node -> pod.
// Needs root (netns.New skips without it).
func TestNetnsPod(t *testing.T) {
	if testing.Short() {
		t.Skip("skip: -short: builds a network-namespace testbed")
	}
	tb := netns.New(t, netns.Topology{Clients: 1, Nodes: 1, PodsPerNode: 1})
	pod := tb.Nodes[0].Pods[0]
	addrs := []netip.AddrPort{netip.AddrPortFrom(pod.IPv4, 4433), netip.AddrPortFrom(pod.IPv6, 4433)}
	p := startBinary(t, []string{"ip", "netns", "exec", pod.NetNS}, "-listen", addrs[0].String(), "-listen", addrs[1].String(), "-instance", "7")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	status := func() (quicext.Status, error) {
		var st quicext.Status
		err := netns.Do(pod.NetNS, func() error {
			var err error
			st, err = quicext.NewControlClient("").Status(ctx)
			return err
		})
		return st, err
	}
	if st, err := status(); err != nil || st.Conns != 0 {
		t.Fatalf("control status in the pod namespace: %+v, %v", st, err)
	}

	ctls, err := load.PinnedTLS(p.fp, "kvservice.steerd.test")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep *load.Report
		err error
	}
	results := make(chan result, len(addrs))
	for _, a := range addrs {
		go func() {
			var r result
			// Run dials from this goroutine, locked in the client namespace by Do, so every
			// client socket belongs to that namespace.
			r.err = tb.Clients[0].Do(func() error {
				var err error
				r.rep, err = load.Run(ctx, load.Options{Addr: a.String(), Conns: 3, Duration: time.Second, TLS: ctls})
				return err
			})
			results <- r
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := status()
		if err != nil {
			t.Fatalf("control status: %v", err)
		}
		if st.Negotiated == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v: want 6 negotiated connections", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range addrs {
		r := <-results
		if r.err != nil {
			t.Fatalf("load from the client namespace: %v", r.err)
		}
		checkClean(t, r.rep, 60)
		t.Logf("%s: sent %d, max gap %.1f ms, median latency %.2f ms", r.rep.Addr, r.rep.Sent, r.rep.MaxGapMS, r.rep.Conns[0].Latency.Median)
	}
	// The service saw the client's own addresses: the packets were routed, not looped back.
	remotes := map[string]int{}
	for _, l := range readLog(t, p.logPath) {
		var e struct {
			Msg    string `json:"msg"`
			Remote string `json:"remote"`
		}
		if json.Unmarshal(l, &e) == nil && e.Msg == "connection accepted" {
			ap, err := netip.ParseAddrPort(e.Remote)
			if err == nil {
				remotes[ap.Addr().String()]++
			}
		}
	}
	c := tb.Clients[0]
	if remotes[c.IPv4.String()] != 3 || remotes[c.IPv6.String()] != 3 {
		t.Errorf("accepted from %v, want 3 from %v and 3 from %v", remotes, c.IPv4, c.IPv6)
	}
	p.stop(t)
	if bytes.Contains(bytes.Join(readLog(t, p.logPath), nil), []byte(`"level":"ERROR"`)) {
		t.Error("service logged an error")
	}
}
