"""The torch module of :mod:`problems.text_classification` (imported only when a model is built: it imports torch)."""

from __future__ import annotations

import torch

__all__ = ["SentenceClassifier"]


class SentenceClassifier(torch.nn.Module):
    """A sentence encoder, mean pooling over the non-pad tokens, and a linear classification head.

    Parameters
    ----------
    encoder : torch.nn.Module
        A ``transformers`` encoder (``BertModel``) whose ``forward(input_ids=, attention_mask=)``
        returns ``last_hidden_state`` of shape (batch, seq_len, hidden).
    head : torch.nn.Linear
        ``hidden -> n_classes``.

    Notes
    -----
    The pooling is sentence-transformers' ``Pooling(pooling_mode_mean_tokens=True)``: the mean of
    the token states where the attention mask is 1. :meth:`get_output_embeddings` returns the
    head, so code that leaves a model's output layer alone (``select_linear_modules(model,
    "all-linear")``, LoRA's trained head) finds it as it finds a language model's ``lm_head``.
    """

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence embeddings, float tensor of shape (batch, hidden).

        Parameters
        ----------
        input_ids : torch.LongTensor of shape (batch, seq_len)
        attention_mask : torch.Tensor of shape (batch, seq_len)
            1 (or True) on real tokens, 0 on padding; every row has at least one real token.
        """
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits, float tensor of shape (batch, n_classes)."""
        return self.head(self.embed(input_ids, attention_mask))

    def get_output_embeddings(self) -> torch.nn.Linear:
        """The classification head (the model's output layer)."""
        return self.head
