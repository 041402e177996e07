"""The cockpit: a web application showing the city at a glance, live, from the platform's open APIs."""
