"""The actor runtime and the five actors (filled in by the actor issue)."""
