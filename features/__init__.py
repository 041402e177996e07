"""OGC API Features through pygeoapi, configured from config.yml."""
