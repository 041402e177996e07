"""What the platform's two web APIs (SensorThings at /v1.1, OGC API Features at /ogcapi) share about HTTP.

Decision: these helpers live in a package of their own, below both APIs and importing nothing of the
platform, so that the OGC API needs neither the SensorThings API's HTTP app nor its Service, and the
SensorThings core stays free of anything above it. `request`: the public base URL and who may see
internal data; `unavailable`: whether a database error means the database is down (a 503).
"""
