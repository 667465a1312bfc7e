"""``alignkit data``: data-engineering commands over every record format and file type alignkit reads.

=================  ==============================================================================================
stats              record count, format and kind, field coverage, length histogram, duplicates, turns per record
dedup              exact duplicates (case and whitespace folded), near duplicates by MinHash LSH (``--near``)
filter             length bounds, repetition, empty responses, refusal phrases, a predicate of your own
decontaminate      drop training records sharing a word 13-gram with an eval set
mix                several sources of one kind sampled into one file, by counts or ratios, seeded
convert            between formats (alpaca / prompt_response <-> messages, hh / ranked -> pairwise, ...)
synth              self-instruct: new instructions from seed ones, kept when novel, answered by a model
=================  ==============================================================================================

Modules: `records` (records in: parse, prompt / response texts), `output` (records out, the report), one module
per command, `commands` (what each runs), `cli` (argument parsers).
"""

from .cli import add_parser, run

__all__ = ["add_parser", "run"]
