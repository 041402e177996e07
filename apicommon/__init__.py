"""What every layer of the platform shares, below all of them: the two web APIs' HTTP helpers (SensorThings at
/v1.1, OGC API Features at /ogcapi) and the one check every config.yml section parser makes.

Decision: these helpers live in a package of their own, below both APIs and importing nothing of the
platform, so that the OGC API needs neither the SensorThings API's HTTP app nor its Service, and the
SensorThings core stays free of anything above it. `request`: the public base URL and who may see
internal data; `unavailable`: what a database error means to the client (down: a 503; a value it cannot
evaluate: a 400); `declaration`: a config mapping with only known keys, every error naming the key path alike;
`stopping`: a process's SIGTERM as an Event, without the handler deadlocking on a second signal; `heap`: start-up's
objects out of the garbage collector's sight; `switching`: how often a process's threads take turns at the interpreter
lock, set by each long-lived process itself.
"""
