"""The SensorThings MQTT extension: the embedded broker, notifications after every write, creating by publish."""
