"""Persistence for SensorThings entities behind one interface: SQLite (embedded) and PostgreSQL/PostGIS."""
