"""The `agentcore demo` steps, written against the public API only."""
