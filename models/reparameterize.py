"""``reparameterize``: a network's inference form, each multi-branch block folded into one conv.

Structural reparameterisation (RepVGG, Ding et al. 2021; MobileOne, Vasu et al. 2023) trains
several parallel linear branches and deploys their sum as one conv (``blocks.RepConv``). This is
the one public step that does it for a whole model, as timm's ``reparameterize_model``: every
module with a ``reparameterize()`` method folds itself, and a zoo model's config says
``reparameterized: true`` so that a checkpoint of it rebuilds the same form.
"""
from __future__ import annotations

import copy
from typing import Optional

from torch import nn

from .blocks.reparam import check_foldable
from .builder import first_conv_name

__all__ = ["is_reparameterizable", "reparameterize", "unfoldable_norm"]


def is_reparameterizable(model: nn.Module) -> bool:
    """Whether ``model`` has a block still in its multi-branch training form."""
    return any(hasattr(m, "reparameterize") and not getattr(m, "reparameterized", True) for m in model.modules())


def unfoldable_norm(model: nn.Module) -> Optional[nn.Module]:
    """A norm inside one of ``model``'s reparameterisable blocks that cannot fold into a conv (a
    LayerNorm), or None: whether ``reparameterize`` can deploy the model."""
    targets = [m for m in model.modules() if m is not model and callable(getattr(m, "reparameterize", None))]
    return next((n for m in targets for n in m.modules() if isinstance(n, (nn.LayerNorm, nn.GroupNorm))), None)


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inference form of ``model`` (a copy unless ``inplace``): each reparameterisable block
    becomes one conv with a bias, its outputs those of the branches within float rounding (in
    eval mode: the BatchNorms fold with their running statistics). A model without such blocks
    comes back unchanged; one whose branches a LayerNorm follows raises ``ValueError`` before
    anything changes (only BatchNorm folds into a conv)."""
    norm = unfoldable_norm(model)
    if norm is not None:
        check_foldable(norm)  # refused before anything changes
    out = model if inplace else copy.deepcopy(model)
    found = False
    for module in list(out.modules()):
        if module is not out and callable(getattr(module, "reparameterize", None)):
            module.reparameterize()
            found = True
    cfg = getattr(out, "cfg", None)
    if found and cfg is not None and hasattr(cfg, "reparameterized") and not cfg.reparameterized:
        out.cfg = cfg.model_copy(update={"reparameterized": True})
    pretrained_cfg = getattr(out, "pretrained_cfg", None)
    if found and isinstance(pretrained_cfg, dict) and "first_conv" in pretrained_cfg:
        out.pretrained_cfg = {**pretrained_cfg, "first_conv": first_conv_name(out)}
    return out
