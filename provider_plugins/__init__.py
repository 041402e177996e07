"""pygeoapi providers for departmental sources and live SensorThings state."""
