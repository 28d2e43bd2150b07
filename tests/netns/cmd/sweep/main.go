// Command sweep removes network namespaces and links that steerd's tests left behind.
//
//	go run ./tests/netns/cmd/sweep        # testbeds whose owner process is gone
//	go run ./tests/netns/cmd/sweep -all   # every stdr-* namespace and stdr* link
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/steerd/steerd/tests/netns"
)

func main() {
	all := flag.Bool("all", false, "remove every stdr-* namespace and stdr* link, in use or not")
	flag.Parse()
	removed, err := netns.Sweep(*all)
	for _, r := range removed {
		fmt.Println("removed", r)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sweep:", err)
		os.Exit(1)
	}
}
