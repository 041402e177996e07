"""The demo city: real open data from Seoul, Melbourne and Hamburg, built into a store once and served live."""
