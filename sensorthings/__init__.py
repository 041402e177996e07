"""An OGC SensorThings API v1.1 server: model, query language, stores, HTTP and MQTT."""
