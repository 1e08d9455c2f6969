// Package deploy holds what docker-compose.yml mounts besides the programs:
// the secrets init script (secrets/), Prometheus' configuration
// (prometheus/) and Grafana's provisioning and dashboard (grafana/). It has
// no code, only tests: that every metric the dashboard queries is one the
// programs export (scraped from a running integrator and rendered by the
// reader), that the scrape targets are the compose services' side ports,
// and that the init script hands each program its secrets as it expects.
package deploy
