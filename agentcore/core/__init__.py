"""The feature-blind core: records, the registry, dispatch, replies, control, and the Host that features see."""
