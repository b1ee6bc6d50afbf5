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
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

exec "$@"
