// Command crmintegrator is the daemon that delivers contacts to the CRM on
// behalf of readers: it serves the crmrpc contract over TCP (optionally TLS)
// and calls the CRM's JSON API. See docs/integrator.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "crmintegrator:", err)
		stop()
		os.Exit(exitCodeOf(err))
	}
}
