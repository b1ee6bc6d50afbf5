#!/bin/sh
# stackctl/redis entrypoint, compatible with the official image's contract:
# `redis-server [config] [--flags]`, or flags / a .conf path alone, run the server;
# anything else is executed as given. Starts as root only to give /data to the
# redis user, then re-executes itself as redis (exec, so redis is PID 1).
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
	find /data \! -user redis -exec chown redis:redis '{}' +
	# An aclfile the redis user cannot read (a root-only 0600 secret, as
	# `docker compose` mounts file secrets): hand redis a private copy on the
	# tmpfs and point the server at it (command-line options win over the file).
	if [ "$#" -ge 2 ] && [ "${2%.conf}" != "$2" ] && [ -r "$2" ]; then
		acl="$(sed -n 's/^[[:space:]]*aclfile[[:space:]]\{1,\}"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$2" | tail -n 1)"
		if [ -n "$acl" ] && [ -r "$acl" ] \
			&& ! setpriv --reuid=redis --regid=redis --init-groups test -r "$acl"; then
			copy="$(mktemp /tmp/redis-aclfile.XXXXXX)"
			# mktemp made it 0600; chown last (without FOWNER root cannot
			# change a file it no longer owns).
			cat "$acl" > "$copy"
			chown redis:redis "$copy"
			set -- "$@" --aclfile "$copy"
		fi
	fi
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

exec "$@"
