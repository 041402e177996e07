"""The SensorThings query language: the typed tree, its parser and its translation to SQL."""
