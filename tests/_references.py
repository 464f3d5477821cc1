"""The libraries' own answers, one helper per explainer, that whybert's must equal.

Each reference is what a user of the library writes: the model and its tokenizer straight
from transformers (`PlainModel`, no whybert code in the way), then shap's
PartitionExplainer with shap's Text masker (`ShapReference`), lime's LimeTextExplainer
(`LimeReference`) or Captum's LayerIntegratedGradients on the word embeddings
(`CaptumReference`). conftest.py serves them on the tiny model as session fixtures
(`plain_model`, `shap_reference`, `lime_reference`, `captum_reference`); a test that must
compare on other outputs (the rows a worker received, the built-in model) builds one from
a classifier or passes its own `logits` function.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from whybert_service.outputs import to_output_space
from whybert_service.types import OutputName

Logits = Callable[[list[str]], np.ndarray]  # strings → logits (rows × labels)


def _output(output: str | OutputName) -> OutputName:
    return OutputName(output) if isinstance(output, str) else output


class PlainModel:
    """A sequence classifier and its tokenizer, called as plain transformers code."""

    def __init__(self, tokenizer: Any, model: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_length = max_length
        self.labels: list[str] = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def from_directory(cls, path: Path) -> PlainModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path))

    @classmethod
    def from_classifier(cls, classifier: Any) -> PlainModel:
        """The weights a whybert classifier serves (the built-in model, or the very module
        a worker runs), with a copy of its tokenizer for the libraries to use."""
        return cls(copy.deepcopy(classifier.tokenizer), classifier.model, classifier.max_length)

    def logits(self, texts: Sequence[str], batch: int | None = None) -> np.ndarray:
        """float64 logits, padded per batch (`batch` texts at a time, all at once by default)."""
        texts = [str(t) for t in texts]
        size = batch or max(1, len(texts))
        out = []
        for i in range(0, len(texts), size):
            enc = self.tokenizer(
                texts[i : i + size], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            with torch.no_grad():
                out.append(self.model(**enc).logits.double().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def outputs(self, texts: Sequence[str], output: str | OutputName, batch: int | None = None) -> np.ndarray:
        return to_output_space(self.logits(texts, batch), _output(output))

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return self.outputs(texts, OutputName.PROBABILITY)

    def predicted(self, text: str) -> int:
        return int(np.argmax(self.logits([text])[0]))


class ShapReference:
    """shap.PartitionExplainer with shap's Text masker over a plain function of strings."""

    def __init__(self, model: PlainModel) -> None:
        self.model = model
        self.labels = model.labels

    def explain(
        self,
        text: str,
        targets: list[int],
        output: str | OutputName = OutputName.PROBABILITY,
        *,
        logits: Logits | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> Any:
        """shap's explanation of `text` for the `targets` columns; `logits` replaces the
        model (the outputs another run received), `seed` seeds numpy first (shap's
        tie-breaks), `options` go to the explainer call (max_evals, fixed_context, ...)."""
        space = _output(output)
        model = logits or self.model.logits

        def f(strings: Any) -> np.ndarray:
            values: np.ndarray = to_output_space(model([str(s) for s in np.asarray(strings).reshape(-1)]), space)
            return values[:, targets]

        if seed is not None:
            np.random.seed(seed)
        explainer = shap_partition_explainer(f, self.model.tokenizer)
        return explainer([text], silent=True, **options)

    def predicted(self, text: str) -> int:
        return self.model.predicted(text)


def shap_partition_explainer(f: Callable[[Any], np.ndarray], tokenizer: Any) -> Any:
    import shap

    return shap.PartitionExplainer(f, shap.maskers.Text(tokenizer))


class LimeReference:
    """lime's LimeTextExplainer over a plain function of strings (64 texts a batch)."""

    def __init__(self, model: PlainModel) -> None:
        self.model = model
        self.labels = model.labels

    def explain(
        self,
        text: str,
        labels: list[int],
        output: str | OutputName = OutputName.PROBABILITY,
        *,
        seed: int,
        logits: Logits | None = None,
        **options: Any,
    ) -> Any:
        """lime's explanation of `text` for `labels`; `logits` replaces the model (the
        outputs whybert's chunks received), `options` go to explain_instance."""
        from lime.lime_text import LimeTextExplainer

        space = _output(output)
        model = logits or (lambda strings: self.model.logits(strings, batch=64))

        def f(strings: list[str]) -> np.ndarray:
            values: np.ndarray = to_output_space(model(list(strings)), space)
            return values

        explainer = LimeTextExplainer(class_names=self.labels, random_state=seed)
        return explainer.explain_instance(text, f, labels=labels, **options)

    @staticmethod
    def word_weights(ref: Any, label: int) -> dict[str, float]:
        """LIME's weight of every word of the text for `label`, 0 for the words it left out."""
        indexed = ref.domain_mapper.indexed_string
        weights = {indexed.word(i): 0.0 for i in range(indexed.num_words())}
        weights.update({indexed.word(i): w for i, w in ref.as_map()[label]})
        return weights


class CaptumReference:
    """Captum's LayerIntegratedGradients on the word embeddings, all steps in one batch
    unless `internal_batch_size` says otherwise; the baseline keeps the special tokens and
    pads the others."""

    def __init__(self, model: PlainModel) -> None:
        self.model = model
        self.labels = model.labels

    def explain(
        self,
        text: str,
        targets: list[int],
        output: str | OutputName,
        n_steps: int,
        internal_batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values (tokens × targets) and convergence deltas (one per target)."""
        from captum.attr import LayerIntegratedGradients

        tokenizer, model = self.model.tokenizer, self.model.model
        space = _output(output)
        enc = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        ids = enc["input_ids"]
        baseline = torch.where(enc["special_tokens_mask"].bool(), ids, tokenizer.pad_token_id)

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits if space is OutputName.LOGIT else torch.softmax(logits, dim=-1)

        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        values, deltas = [], []
        for target in targets:
            attr, delta = lig.attribute(
                ids,
                baselines=baseline,
                target=target,
                additional_forward_args=(enc["attention_mask"],),
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            values.append(attr.sum(-1)[0].detach().double().numpy())
            deltas.append(float(delta[0]))
        return np.stack(values, axis=1), np.array(deltas)


__all__ = ["CaptumReference", "LimeReference", "PlainModel", "ShapReference"]
