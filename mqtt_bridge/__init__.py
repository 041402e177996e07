"""Turns device MQTT messages into SensorThings Observations."""
