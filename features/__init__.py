"""The OGC API Features (routes, parsed requests, CQL2, CRS, pygeoapi's configuration) and, in `source`, the contract
its sources implement; it finds sources in one registry and never imports a concrete one."""
