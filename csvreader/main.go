// Command csvreader streams customer exports into the CRM through
// crmintegrator, exactly once, and records what the CRM accepted in
// PostgreSQL. Run `csvreader -h` for its flags.
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
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "csvreader:", msg)
		}
		os.Exit(exitCodeOf(err))
	}
}
