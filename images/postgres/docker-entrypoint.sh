#!/bin/bash
# stackctl/postgres entrypoint, compatible with the official image's contract:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE,
#   POSTGRES_DB (default $POSTGRES_USER), PGDATA, POSTGRES_INITDB_ARGS,
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256),
#   /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh run once on an empty PGDATA.
# Starts as root only to fix ownership, then re-executes itself as postgres.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u +'%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# `docker run image -c x=y` and `postgres -c x=y` both mean: run the server.
if [ "$#" -eq 0 ] || [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" != 'postgres' ]; then
	exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
runtime_dir=/var/run/postgresql

if [ "$(id -u)" = '0' ]; then
	mkdir -p "$PGDATA" "$runtime_dir"
	# Only what is not already ours: cheap on a large, initialised data directory.
	find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
	chmod 700 "$PGDATA"
	chown postgres:postgres "$runtime_dir"
	chmod 3777 "$runtime_dir"
	# A secret mounted as root:root 0600 is unreadable after the switch: hand a
	# private copy to postgres on the tmpfs, removed once initdb has used it.
	if [ ! -s "$PGDATA/PG_VERSION" ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
		[ -r "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not readable"
		copy="$runtime_dir/.initdb-password"
		install -m 600 -o postgres -g postgres "$POSTGRES_PASSWORD_FILE" "$copy"
		export POSTGRES_PASSWORD_FILE="$copy"
	fi
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

# value of VAR, or the contents of the file named by VAR_FILE (not both).
file_env() {
	local var="$1" file_var="${1}_FILE" def="${2:-}" val
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		die "both $var and $file_var are set (they are exclusive)"
	fi
	val="$def"
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!file_var:-}" ]; then
		val="$(< "${!file_var}")" || die "cannot read ${file_var}=${!file_var}"
	fi
	export "$var"="$val"
	unset "$file_var"
}

run_init_files() {
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then
					log "running $f"; "$f"
				else
					log "sourcing $f"; . "$f"
				fi
				;;
			*.sql) log "running $f"; psql_init -f "$f" ;;
			*.sql.gz) log "running $f"; gunzip -c "$f" | psql_init ;;
			*) log "ignoring $f" ;;
		esac
	done
}

psql_init() {
	psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" "$@"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	if [ -f "$runtime_dir/.initdb-password" ]; then rm -f "$runtime_dir/.initdb-password"; fi
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
		die "the database is uninitialised and no superuser password is set: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust, for tests only)"
	fi

	log "initialising $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
	# shellcheck disable=SC2086
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		--auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
		--encoding=UTF8 --locale=C.UTF-8 $POSTGRES_INITDB_ARGS -D "$PGDATA" >&2
	printf '\n# stackctl: any address, password authentication\nhost all all all %s\n' \
		"$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
	printf "\n# stackctl\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

	# A temporary server on the unix socket only, for the database and the init files.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w -t 60 start >&2
	export PGHOST="$runtime_dir" PGPORT=5432
	if [ "$POSTGRES_DB" != 'postgres' ]; then
		log "creating database $POSTGRES_DB"
		psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
			--set db="$POSTGRES_DB" <<-'SQL'
			SELECT format('CREATE DATABASE %I', :'db')
			WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
		SQL
	fi
	run_init_files
	pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >&2
	unset PGHOST PGPORT POSTGRES_PASSWORD
	log "initialisation complete; starting postgres"
fi

unset POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE
exec "$@"
