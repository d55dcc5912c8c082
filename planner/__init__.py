"""The reasoning layer, free of NATS: planning, decomposition, providers (filled in by later issues)."""
