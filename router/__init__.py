"""Ray Serve applications: the HTTP API for runs and the model router (see issues 3 and 6)."""
