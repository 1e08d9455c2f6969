// Command crmintegrator is the daemon that delivers contacts to the CRM on
// behalf of readers: it serves the crmrpc contract over TCP (optionally TLS)
// and calls the CRM's JSON API. See docs/integrator.md.
package main

import "crmsync/shared/cli"

func main() { cli.Main("crmintegrator", run) }
