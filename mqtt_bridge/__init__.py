"""Turns device MQTT messages into SensorThings Observations; the shell hands it its rules and broker."""
