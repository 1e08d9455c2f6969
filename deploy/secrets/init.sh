#!/bin/sh
# The `secrets` service of docker-compose.yml: runs once before the others
# at every `up` and hands each program the secrets it needs, as files only it
# can read, so that no secret is written in docker-compose.yml or put in a
# program's environment.
#
# A secret given in the environment (POSTGRES_PASSWORD, CRM_TOKEN,
# RPC_TOKEN) is written as given; one not given keeps the value it had, or
# is drawn at random (32 bytes from /dev/urandom, hex) the first time. The
# originals live in /secrets (this service's own volume); each program's
# volume, mounted read-only at its /run/secrets, gets copies owned by the
# user it runs as, mode 0400. ROOT prefixes every path, for the test
# (deploy/secrets_test.go).
set -eu
umask 077
root=${ROOT:-}
nonroot=65532:65532 # the distroless image's nonroot: crmintegrator, csvreader, fakecrm
postgres=999:999    # the postgres image's postgres user (its entrypoint reads as root)
grafana=472:0       # the grafana image's grafana user

random() { head -c 32 /dev/urandom | od -An -vtx1 | tr -d ' \n'; }

# keep NAME VALUE: the original of secret NAME, VALUE when given.
keep() {
	f=$root/secrets/$1
	if [ -n "$2" ]; then
		printf '%s\n' "$2" >"$f.new"
		mv "$f.new" "$f"
	elif [ ! -s "$f" ]; then
		random >"$f.new"
		echo >>"$f.new"
		mv "$f.new" "$f"
		echo "secrets: $1 drawn at random"
	fi
}

# give SECRET TO OWNER [CONTENT]: writes CONTENT (default: the secret) to
# the file TO, owned by OWNER, mode 0400.
give() {
	if [ $# -ge 4 ]; then
		printf '%s\n' "$4" >"$root/$2.new"
	else
		cat "$root/secrets/$1" >"$root/$2.new"
	fi
	chmod 0400 "$root/$2.new"
	chown "$3" "$root/$2.new"
	mv "$root/$2.new" "$root/$2"
}

keep pg-password "${POSTGRES_PASSWORD:-}"
keep crm-token "${CRM_TOKEN:-}"
keep rpc-token "${RPC_TOKEN:-}"
keep grafana-admin-password ""

give pg-password to/postgres/pg-password "$postgres"
# A pgpass line for csvreader (lib/pq reads PGPASSFILE, and only a file no
# one else may read): any host, port, database and user; ':' and '\'
# escaped.
pgpass=$(sed 's/[\\:]/\\&/g' "$root/secrets/pg-password")
give pg-password to/csvreader/pgpass "$nonroot" "*:*:*:*:$pgpass"
give rpc-token to/csvreader/rpc-token "$nonroot"
give crm-token to/crmintegrator/crm-token "$nonroot"
give rpc-token to/crmintegrator/rpc-token "$nonroot"
give crm-token to/fakecrm/crm-token "$nonroot"
give grafana-admin-password to/grafana/admin-password "$grafana"

# csvreader writes its rejects file and report here.
chown "$nonroot" "$root/to/reports"
echo "secrets: ready"
