"""The OGC API's sources (departmental tables, live SensorThings state, indicators), implementing `features.source`."""
