"""extract: one extraction attack against a victim, local or behind a live server (--server URL)."""
from __future__ import annotations

from extraction.config import ExtractionConfig
from extraction.loop import run_extraction
from parameters import add_recipe
from server.client import ApiClient, RemoteOracle, resolve_api_key


def extract(s) -> tuple:
    """Run (or resume) the extraction; with --server, a live server answers, accounts and prices."""
    oracle = None
    if s.server:
        client = ApiClient(s.server, resolve_api_key(s.api_key), workers=s.workers)
        oracle, s = RemoteOracle(client, output=s.victim_output), s.replace(api_key=None)  # the key is never logged
    try:
        result = run_extraction(ExtractionConfig.of(s.as_dict()), oracle=oracle)
    finally:
        if oracle is not None:
            oracle.close()
    final = result["final"]
    text = (f"{s.mode} on {s.dataset}: {final['queries']} queries, accuracy {final['accuracy']:.2f}%, "
            f"fidelity {final['fidelity']:.2f}%\nlog: {result['log']}\nparams: {result['params']}")
    return result, text


def add_arguments(sub) -> None:
    add_recipe(sub, "extract")  # other commands write and run its command lines: its flags live in parameters
