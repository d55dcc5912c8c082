"""cadre: validated, LLM-planned workflows run by actors over NATS, recorded for replay and audit."""

__version__ = "0.1.0"
