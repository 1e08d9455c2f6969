// Command csvreader streams customer exports into the CRM through
// crmintegrator, exactly once, and records what the CRM accepted in
// PostgreSQL. Run `csvreader -h` for its flags.
package main

import "crmsync/shared/cli"

func main() { cli.Main("csvreader", run) }
