"""The SensorThings HTTP API as Starlette routes."""
