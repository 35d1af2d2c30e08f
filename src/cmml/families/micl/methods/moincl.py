"""MoInCL: pseudo targets (PTGM), instruction-based distillation (IKD) and weight fusion, each switchable.

* **PTGM**: when the current task's type was learned before in the other format, pseudo samples in
  the old format join every batch (``pseudo_num`` of them): current QA after captioning -> the previous
  model captions the batch's last inputs online (beam search); current captioning after QA -> the
  stored pseudo QA pair of the batch's first inputs. Loss: CE over the whole batch + ``lambda_kl`` ·
  T² · KL(old ‖ new) on the pseudo samples. The trigger looks at the same input modality (the paper);
  ``as_released`` looks at every learned task (the code's global list).
* **IKD**: ``ikd_samples`` text-only instructions drawn with replacement per batch, KL(old ‖ new) at T.
* **Fusion**: after every epoch the new model becomes ``(1-α)·old + α·new``. Fixed: the step starts by
  folding the previous LoRA update into the base weights, so scaling the new adapter's B by α is an
  exact interpolation of the weights; ``as_released``: LoRA A and B are interpolated separately.

The KL on pseudo samples is fixed to the target positions of aligned rows; ``as_released`` slices the
new model's flattened logits against the teacher's differently padded batch with no mask, and IKD keeps
padding positions (docs/micl.md, surprises 2 and 3).
"""

from __future__ import annotations

from typing import Any

import torch

from cmml.families.micl.tasks import TASKS
from cmml.families.micl.methods.base import MiclMethod, kl_div
from cmml.families.micl.model import Example, lora_layers

HPARAMS = ("ptgm", "ikd", "fusion", "as_released", "fuse_projections", "alpha_fusion", "pseudo_num", "lambda_kl",
           "temperature", "ikd_samples", "ikd_weight")


def ptgm_mode(current: str, learned: list[str], per_modality: bool = True) -> str | None:
    """Which pseudo samples a task gets: ``"caption"`` (QA now, captioning before), ``"qa"`` (the reverse) or None.

    ``per_modality``: only tasks on the current task's input modality count (the paper); otherwise
    every learned task does (the released code's global list of learned types).
    """
    mod, kind = TASKS[current]
    kinds = {TASKS[t][1] for t in learned if not per_modality or TASKS[t][0] == mod}
    if kind == "qa" and "cap" in kinds:
        return "caption"
    if kind == "cap" and "qa" in kinds:
        return "qa"
    return None


class Method(MiclMethod):
    """MoInCL on top of sequential LoRA fine-tuning (step 0 is plain fine-tuning)."""

    NEEDS_PREVIOUS = True

    def merge_at_start(self) -> bool:
        return self.ctx.step > 0 and bool(self.ctx.hp["fusion"]) and not self.ctx.hp["as_released"]

    def begin_task(self) -> None:
        c, hp = self.ctx, self.ctx.hp
        self.released = bool(hp["as_released"])
        self.mode = None
        if c.step > 0 and hp["ptgm"] and hp["pseudo_num"] > 0:
            self.mode = ptgm_mode(c.tasks[c.step], c.tasks[: c.step], per_modality=not self.released)
        self.old_state = {n: p.detach().clone() for n, p in c.model.trainable().items()}
        self.instructions = c.instructions if hp["ikd"] else []
        self.pseudo_used = 0

    def _pseudo(self, batch: list[Example]) -> list[Example]:
        P = int(self.ctx.hp["pseudo_num"])
        if self.mode == "caption":
            src = batch[-P:]
            prompts = [Example(ex.modality, ex.grid, f"describe the {ex.modality} .") for ex in src]
            caps = self.ctx.previous.generate(prompts, self.ctx.device, self.ctx.generation)
            return [Example(p.modality, p.grid, p.instruction, c or "<unk>") for p, c in zip(prompts, caps)]
        return [Example(ex.modality, ex.grid, ex.pseudo[0], ex.pseudo[1]) for ex in batch[:P] if ex.pseudo]

    def loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        c, hp, m = self.ctx, self.ctx.hp, self.ctx.model
        if c.step == 0 or c.previous is None:
            return super().loss(batch)
        parts: dict[str, float] = {}
        pseudo = self._pseudo(batch) if self.mode else []
        full = batch + pseudo
        logits, _, labels = m.forward_batch(full, c.device)
        total = m.target_loss(logits, labels)
        parts["ce"] = total.item()
        T = hp["temperature"]
        if pseudo:
            self.pseudo_used += len(pseudo)
            with torch.no_grad():
                old, _, old_labels = c.previous.forward_batch(pseudo, c.device)
            new = logits[len(batch):]
            if self.released:  # flattened rows of a batch padded to another length, no mask
                V = new.shape[-1]
                n_old = old.shape[0] * old.shape[1]
                kl = kl_div(new.reshape(-1, V)[-n_old:], old.reshape(-1, V), T)
            else:
                L = old.shape[1]
                rows = old_labels[:, 1:] != -100
                kl = kl_div(new[:, : L - 1][rows], old[:, :-1][rows], T)
            total = total + hp["lambda_kl"] * kl
            parts["ptgm_kl"] = kl.item()
        if self.instructions:
            picks = torch.randint(len(self.instructions), (int(hp["ikd_samples"]),), generator=c.generator)
            texts = [Example(None, None, self.instructions[int(i)]) for i in picks]
            new, mask, _ = m.forward_batch(texts, c.device)
            with torch.no_grad():
                old, _, _ = c.previous.forward_batch(texts, c.device)
            keep = torch.ones_like(mask, dtype=torch.bool) if self.released else mask.bool()
            kl = kl_div(new[keep], old[keep], T)
            total = total + hp["ikd_weight"] * kl
            parts["ikd_kl"] = kl.item()
        return total, parts

    def progress(self) -> dict[str, Any]:
        return {"pseudo_used": self.pseudo_used}

    def restore_progress(self, state: dict[str, Any]) -> None:
        self.pseudo_used = int(state["pseudo_used"])

    def end_epoch(self, epoch: int) -> None:
        c, hp = self.ctx, self.ctx.hp
        if c.step == 0 or not hp["fusion"]:
            return
        fuse(c.model, self.old_state, float(hp["alpha_fusion"]), released=self.released,
             projections=bool(hp["fuse_projections"]))

    def end_task(self) -> dict[str, Any]:
        return {"pseudo_samples": self.pseudo_used, "ptgm_mode": self.mode or "none"}


def fuse(model: Any, old: dict[str, torch.Tensor], alpha: float, released: bool, projections: bool) -> None:
    """Weight fusion ``p <- (1-α)·p_old + α·p`` (α: the new model's weight).

    Fixed (``released`` False, LoRA merged at the step's start): the adapter update is scaled, B <- α·B,
    which interpolates the full weights exactly; released: every LoRA A and B separately. Adapters
    (projections) only with ``projections``.
    """
    with torch.no_grad():
        lora_names = set()
        for lname, layer in lora_layers(model.lm).items():
            for part in ("lora_A", "lora_B"):
                w = getattr(layer, part)["default"].weight
                name = next(n for n, p in model.trainable().items() if p is w)
                lora_names.add(name)
                if released:
                    w.mul_(alpha).add_(old[name].to(w.device), alpha=1 - alpha)
                elif part == "lora_B":
                    w.mul_(alpha)
        if projections:
            for n, p in model.trainable().items():
                if n not in lora_names:
                    p.mul_(alpha).add_(old[n].to(p.device), alpha=1 - alpha)
