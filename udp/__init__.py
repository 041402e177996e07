"""The platform shell: configuration, the `udp` command and the one ASGI app that mounts everything."""
