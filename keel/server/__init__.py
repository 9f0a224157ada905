"""HTTP surfaces on Ray Serve: the runs API and the governed MCP gateway."""
