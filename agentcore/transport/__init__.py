"""Everything that knows nats-py: the connection, inline delivery, subscriptions, pulls, settlement, frames, offload."""
