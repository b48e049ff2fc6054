"""A GRACE-style memory editor (Hartvigsen et al. 2023): edits live in a codebook beside the model.

At one block the editor keeps entries (key, value, radius ε). A key is the block's input at the
token that precedes a target token of an edit; when a position's input lies within ε of an entry's
key (the nearest such entry), the block's output there is replaced by the entry's value, which was
optimised to make the edit's target token follow. Everywhere else the model runs unchanged: the
weights are never touched, and removing an edit's entries undoes it exactly. A new key whose ball
would overlap an entry with a different target shrinks both radii to half their distance (GRACE's
split), so conflicting edits never take over each other's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.edit.layer_hooks import block, only_trainable, patch_output, record_inputs, record_outputs
from lmkit.edit.prompt_tokens import pad_right, target_ids
from lmkit.edit.target_vector import EditRequest
from lmkit.errors import ConfigError


@dataclass
class GraceEntry:
    edit_id: int
    key: torch.Tensor
    value: torch.Tensor
    radius: float
    token: int  # the target token this entry produces


class GraceEditor:
    """Codebook edits at block `layer` of `model`; active between attach() and detach()."""

    def __init__(self, model: nn.Module, layer: int, epsilon: float, steps: int = 100, lr: float = 0.1) -> None:
        if epsilon <= 0:
            raise ConfigError(f"the GRACE radius epsilon must be > 0, got {epsilon}")
        self.model, self.layer, self.epsilon, self.steps, self.lr = model, layer, epsilon, steps, lr
        self.site = block(model, layer)
        self.entries: list[GraceEntry] = []
        self._next_id = 0
        self._handle = None

    # ---- attaching -----------------------------------------------------------------------
    def attach(self) -> "GraceEditor":
        if self._handle is None:
            self._handle = self.site.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "GraceEditor":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _hook(self, _module, args, out):
        if not self.entries:
            return out
        x, h = args[0], out[0] if isinstance(out, tuple) else out
        keys = torch.stack([e.key for e in self.entries]).to(x.dtype)
        radii = torch.tensor([e.radius for e in self.entries], device=x.device)
        dist = torch.cdist(x.reshape(-1, x.shape[-1]).float(), keys.float())  # [B*T, N]
        dist = torch.where(dist <= radii, dist, torch.inf)
        best, idx = dist.min(-1)
        hit = torch.isfinite(best)
        if not bool(hit.any()):
            return out
        values = torch.stack([e.value for e in self.entries]).to(h.dtype)
        flat = h.reshape(-1, h.shape[-1]).clone()
        flat[hit] = values[idx[hit]]
        h = flat.reshape(h.shape)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    # ---- editing -------------------------------------------------------------------------
    def add(self, tokenizer, request: EditRequest) -> int:
        """Write one edit (one entry per target token); -> its id for `remove`."""
        prompt = tokenizer.encode(request.prompt.format(request.subject))
        tgt = target_ids(tokenizer, request.target_new)
        ids = pad_right([prompt + tgt[:-1]])
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tgt))
        was_attached = self._handle is not None
        self.detach()  # keys and initial values come from the unedited block
        try:
            with torch.no_grad(), record_inputs(self.site) as inputs, record_outputs(self.site) as outputs:
                self.model(ids)
            keys = inputs[0][0, positions].detach()
            values = self._optimise_values(ids, positions, torch.tensor(tgt), outputs[0][0, positions].detach())
        finally:
            if was_attached:
                self.attach()
        edit_id = self._next_id
        self._next_id += 1
        for key, value, token in zip(keys, values, tgt):
            self._insert(GraceEntry(edit_id, key, value, self.epsilon, int(token)))
        return edit_id

    def _optimise_values(self, ids, positions, tgt, init) -> torch.Tensor:
        values = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([values], lr=self.lr)

        def replace(h):
            h = h.clone()
            h[0, positions] = values.to(h.dtype)
            return h

        with only_trainable(self.model):
            for _ in range(self.steps):
                with patch_output(self.site, replace):
                    logits = self.model(ids).logits[0, positions].float()
                loss = F.cross_entropy(logits, tgt)
                if loss.item() < 1e-3:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
        return values.detach()

    def _insert(self, new: GraceEntry) -> None:
        for e in self.entries:
            d = float((e.key - new.key).norm())
            if e.token != new.token and d < e.radius + new.radius:
                e.radius = min(e.radius, d / 2)
                new.radius = min(new.radius, d / 2)
        self.entries.append(new)

    def remove(self, edit_id: int) -> None:
        """Undo one edit: its entries leave the codebook (the model is as before it)."""
        if not any(e.edit_id == edit_id for e in self.entries):
            raise ConfigError(f"no GRACE edit with id {edit_id}")
        self.entries = [e for e in self.entries if e.edit_id != edit_id]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The codebook as tensors (safetensors-ready)."""
        if not self.entries:
            return {}
        return {"keys": torch.stack([e.key for e in self.entries]).contiguous(),
                "values": torch.stack([e.value for e in self.entries]).contiguous(),
                "radii": torch.tensor([e.radius for e in self.entries]),
                "tokens": torch.tensor([e.token for e in self.entries]),
                "edit_ids": torch.tensor([e.edit_id for e in self.entries])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.entries = [GraceEntry(int(i), k, v, float(r), int(t)) for i, k, v, r, t in zip(
            state["edit_ids"], state["keys"], state["values"], state["radii"], state["tokens"])] if state else []
        self._next_id = max((e.edit_id for e in self.entries), default=-1) + 1
