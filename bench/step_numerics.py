"""First-step numerics of three tiny configs: loss, loss components and gradient norm, as JSON.

Run it in two checkouts (``PYTHONPATH=<tree>/src python bench/step_numerics.py > <tree>.json``)
and compare: a restructuring must give the same numbers, an op-level speed-up the same to
float32 rounding (bench/RESULTS.md, "Numerics before and after"). Random weights (seed 0), one
fixed batch of two 128x160 images (the second padded at 140 px), 5 boxes each, 1 thread.
"""

import json

import torch

from detrkit.config import load_config
from detrkit.models.registry import build_model

torch.set_num_threads(1)
out = {}
for name in ["demo", "detr-tiny", "deformable-detr-tiny"]:
    torch.manual_seed(0)
    if name == "demo":
        cfg = load_config("demo")
        model = build_model(cfg.model.name, num_classes=8, **cfg.model.overrides)
    else:
        model = build_model(name, num_classes=8)
    model.train()
    g = torch.Generator().manual_seed(1)
    B, H, W = 2, 128, 160
    x = torch.randn(B, 3, H, W, generator=g)
    m = torch.ones(B, H, W, dtype=torch.bool)
    m[1, :, 140:] = False
    t = [
        {"boxes": torch.rand(5, 4, generator=g) * 0.4 + 0.3, "labels": torch.randint(0, 8, (5,), generator=g)}
        for _ in range(B)
    ]
    o = model(x, m, t)
    o["loss"].backward()
    gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    out[name] = {
        "loss": float(o["loss"]),
        "grad_norm": float(gn),
        **{k: float(v) for k, v in o.items() if k.startswith("loss_") and torch.is_tensor(v) and v.ndim == 0},
    }
print(json.dumps(out))
