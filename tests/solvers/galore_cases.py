"""Small models and data shared by the GaLore optimizer tests."""

import torch


class Block(torch.nn.Module):
    """Two linear layers of opposite orientations with biases, a norm between them (a non-matrix
    parameter) and an optional bias-free ``lm_head``; attention/MLP-like names for target rules."""

    def __init__(self, n_in, hidden, n_out, *, head=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.attn_proj = torch.nn.Linear(n_in, hidden)
        self.norm = torch.nn.LayerNorm(hidden)
        self.mlp_out = torch.nn.Linear(hidden, n_out)
        self.lm_head = None if head is None else torch.nn.Linear(n_out, head, bias=False)

    def forward(self, x):
        y = self.mlp_out(self.norm(torch.tanh(self.attn_proj(x))))
        return y if self.lm_head is None else self.lm_head(torch.tanh(y))


def batches(n, n_in, n_out, *, seed=1, size=24):
    """``n`` seeded regression batches ``(x, y)`` of ``size`` rows."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, n_in, generator=gen), torch.randn(size, n_out, generator=gen)) for _ in range(n)]


def train(model, opt, data, dtype=torch.float32):
    """One optimizer step per batch on the mean squared error, the model run in ``dtype``."""
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
        opt.step()


def assert_resume_is_exact(build, data, path, *, dtype=torch.float32, split=3, after_load=None):
    """An uninterrupted run equals one checkpointed after ``split`` batches, reloaded with
    ``torch.load(weights_only=True)`` into a fresh ``build()`` and continued, bit for bit.

    ``after_load(model, optimizer)`` may check the reloaded state before training goes on.
    """
    model, opt = build()
    train(model, opt, data, dtype)
    first, opt_first = build()
    train(first, opt_first, data[:split], dtype)
    torch.save({"model": first.state_dict(), "opt": opt_first.state_dict()}, path)
    resumed, opt_resumed = build()
    checkpoint = torch.load(path, weights_only=True)
    resumed.load_state_dict(checkpoint["model"])
    opt_resumed.load_state_dict(checkpoint["opt"])
    if after_load is not None:
        after_load(resumed, opt_resumed)
    train(resumed, opt_resumed, data[split:], dtype)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
