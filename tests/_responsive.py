"""Test helper: a tiny random BERT whose outputs actually depend on the words of a text.

The conftest model keeps BERT's initial weights (std 0.02), so its probabilities move by
~1e-4 from one text to another and attributions are ~1e-5: too small for a tolerance of
1e-5 to tell right from wrong. Scaling the encoder's and pooler's linear weights makes
words move the output by tenths, so comparisons with the libraries mean something.
"""

from __future__ import annotations

from pathlib import Path

import torch

SCALE = 8.0


def make_responsive_bert(path: Path) -> Path:
    """`make_tiny_bert`, then its attention, feed-forward and pooler weights × SCALE."""
    from conftest import make_tiny_bert
    from transformers import AutoModelForSequenceClassification

    make_tiny_bert(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ("encoder" in name or "pooler" in name):
                module.weight.mul_(SCALE)
    model.save_pretrained(path, safe_serialization=True)
    return path
