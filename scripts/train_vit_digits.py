"""Train the packaged ``vit_digits`` model on scikit-learn's 8x8 digits, deterministically.

Writes ``vit2hw/assets/vit_digits.pth`` (plain float32 state dict) and
``vit2hw/assets/vit_digits.json`` (test accuracy and how it was obtained).
Same torch version + same thread count -> bit-identical weights.

    python scripts/train_vit_digits.py [--epochs N] [--out-dir DIR]

Recipe: AdamW (lr 1e-3, weight decay 0.05), one linear warm-up epoch then cosine
decay, batch 64, label smoothing 0.1. Augmentation: each training image is shifted
by -1, 0 or +1 pixel in each direction (zero fill), drawn from a seeded generator.
The train split only is used for training; the test split only for the final figure.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vit2hw.data import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE, load_digits_split, normalize
from vit2hw.models.evaluate import top1_correct
from vit2hw.models.zoo import asset_path, build_model, get_spec, init_synthetic

SEED = 0
THREADS = 1
BATCH = 64
LR = 1e-3
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image of ``x [B, C, H, W]`` by up to one pixel per axis, zero fill."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=gen)
    dx = torch.randint(0, 3, (b,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--out-dir", type=Path, default=asset_path(""))
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    spec = get_spec("vit_digits")
    model = init_synthetic(build_model(spec), seed=SEED).train()

    train = load_digits_split("train")
    test = load_digits_split("test")
    x_train = normalize(train.images, spec)
    y_train = torch.as_tensor(train.labels)
    # Shifted-in pixels must read as blank (raw 0), whose normalized value is not 0:
    # offset the inputs so that blank is 0 during the shift, and undo it afterwards.
    blank = float(normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), spec))
    x_train = x_train - blank

    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    gen = torch.Generator().manual_seed(SEED)
    # The partial last batch (1347 % 64 = 3 images) is dropped: its noisy gradient
    # destabilises training, and the per-epoch reshuffle still visits every image.
    steps_per_epoch = len(train) // BATCH
    total = args.epochs * steps_per_epoch
    step = 0
    start = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * BATCH : (i + 1) * BATCH]
            x = random_shift(x_train[idx], gen) + blank
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, steps_per_epoch, args.lr)
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if (epoch + 1) % 25 == 0 or epoch + 1 == args.epochs:
            model.eval()
            acc = top1_correct(model, test, spec) / len(test)
            model.train()
            print(f"epoch {epoch + 1:4d}  loss {loss.item():.4f}  test acc {acc:.4f}  ({time.time() - start:.0f}s)")

    model.eval()
    correct = top1_correct(model, test, spec)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.out_dir / "vit_digits.pth")
    record = {
        "model": spec.name,
        "test_accuracy": correct / len(test),
        "test_correct": correct,
        "test_images": len(test),
        "train_images": len(train),
        "epochs": args.epochs,
        "seed": SEED,
        "threads": THREADS,
        "recipe": f"AdamW lr {args.lr} wd {WEIGHT_DECAY}, 1 warm-up epoch + cosine, batch {BATCH}, "
        f"label smoothing {LABEL_SMOOTHING}, random +-1 pixel shifts",
        "split": f"sklearn load_digits; train_test_split(arange(1797), test_size={DIGITS_TEST_SIZE}, "
        f"random_state={DIGITS_SPLIT_SEED}, stratify=target)",
        "normalization": f"(pixel * {spec.pixel_scale} - {spec.mean[0]}) / {spec.std[0]} on raw 0..16 pixels",
        "torch_version": torch.__version__,
        "train_seconds": round(time.time() - start, 1),
    }
    (args.out_dir / "vit_digits.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {correct}/{len(test)} = {correct / len(test):.4f}; wrote {args.out_dir}")


if __name__ == "__main__":
    main()
