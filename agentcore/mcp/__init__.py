"""MCP over NATS: MCP servers hosted by agents, their tools called through NATS subjects."""
