"""The guarded prediction API: a FastAPI server that makes every client pay a calibrated proof-of-work,
its state (accounts, API keys, spent challenges) behind one store interface, and a client."""
