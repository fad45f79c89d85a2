"""Robustness: how accuracy and predictions change under small, label-preserving perturbations.

Text: words dropped (``token_dropout``) and keyboard typos (``typos``) on the raw strings (both texts of a sentence
pair). Images:
gaussian noise (std in [0, 1] pixel units) and gaussian blur (sigma in pixels) on the eval tensors.
For each perturbation the section reports accuracy under it and the flip rate: the fraction of test
predictions that change from the clean ones. Repeat ``r`` of a random perturbation draws from
``random.Random(seed + r)`` (text) or ``torch.Generator().manual_seed(seed + r)`` (noise), so a
report is reproducible; blur is deterministic and runs once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch

from sft.data.batching import length_batches
from sft.data.encoding import is_pair
from sft.errors import ConfigError
from sft.report.htmlparts import MISSING, esc, how, is_num, num, table

DEFAULTS: dict[str, Any] = {"token_dropout": 0.1, "typo_rate": 0.05, "noise_std": 0.05, "blur_sigma": 1.0,
                            "repeats": 1}
TEXT_CHUNK = 64  # texts encoded per forward pass
IMAGE_CHUNK = 32  # images held at once (a whole test set of 224x224 tensors would not fit in memory)

# QWERTY positions (row, x): rows are staggered, so a key's neighbours are the keys at most one row and
# one key-width away.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_ROW_OFFSETS = (0.0, 0.25, 0.75)
_POSITIONS = {ch: (r, col + _ROW_OFFSETS[r]) for r, row in enumerate(_ROWS) for col, ch in enumerate(row)}
KEYBOARD_NEIGHBOURS: dict[str, str] = {
    ch: "".join(other for other, (r2, x2) in _POSITIONS.items()
                if other != ch and abs(r2 - r) <= 1 and abs(x2 - x) <= 1)
    for ch, (r, x) in _POSITIONS.items()
}


# ---------------------------------------------------------------------- text perturbations
def _check_probability(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r} must be a probability in [0, 1].")


def token_dropout(text: str, p: float, rng: random.Random) -> str:
    """Drop each whitespace-separated word with probability ``p``; at least one word always stays.
    Returns ``text`` unchanged when no word is dropped."""
    _check_probability(p, "p")
    words = text.split()
    if not words or p == 0:
        return text
    kept = [word for word in words if rng.random() >= p]
    if not kept:  # an empty input says nothing about robustness: keep one word at random
        kept = [words[rng.randrange(len(words))]]
    return text if len(kept) == len(words) else " ".join(kept)


def _neighbour(ch: str, rng: random.Random) -> str:
    """A letter next to ``ch`` on a QWERTY keyboard, in ``ch``'s case (any letter for non-ASCII ones)."""
    options = KEYBOARD_NEIGHBOURS.get(ch.lower()) or "abcdefghijklmnopqrstuvwxyz"
    out = rng.choice(options)
    return out.upper() if ch.isupper() else out


def typos(text: str, rate: float, rng: random.Random) -> str:
    """Give each alphabetic character a typo with probability ``rate``: swap it with the next letter,
    delete it, insert a keyboard neighbour after it, or replace it with a keyboard neighbour (equally
    likely). A swap at the end of a word becomes a replacement."""
    _check_probability(rate, "rate")
    if rate == 0:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not ch.isalpha() or rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        kind = rng.choice(("swap", "delete", "insert", "replace"))
        if kind == "swap" and i + 1 < len(text) and text[i + 1].isalpha():
            out += [text[i + 1], ch]
            i += 2
            continue
        if kind == "insert":
            out += [ch, _neighbour(ch, rng)]
        elif kind in ("replace", "swap"):
            out.append(_neighbour(ch, rng))
        # delete: nothing
        i += 1
    return "".join(out)


# ---------------------------------------------------------------------- image perturbations
def _mean_std(ctx: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pre = ctx.datamodule.preprocess
    return (torch.tensor(pre["mean"], device=device).view(-1, 1, 1),
            torch.tensor(pre["std"], device=device).view(-1, 1, 1))


def add_noise(ctx: Any, pixels: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Normalised ``pixels`` plus gaussian noise of ``std`` in [0, 1] RGB units, clipped to the valid
    pixel range (noise is drawn on the CPU so a seed gives the same images on any device)."""
    mean, scale = _mean_std(ctx, pixels.device)
    noise = torch.randn(pixels.shape, generator=generator).to(pixels.device)
    rgb = (ctx.denormalize(pixels) + std * noise).clamp(0, 1)
    return (rgb - mean) / scale


def blur_kernel_size(sigma: float, height: int, width: int) -> int:
    """``2 * ceil(3 sigma) + 1``, capped so the reflect padding fits inside the image."""
    size = 2 * math.ceil(3 * sigma) + 1
    return min(size, 2 * min(height, width) - 1)


def blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with ``sigma`` in pixels. Applied to normalised tensors directly: the blur is linear
    with weights summing to one, so it commutes with the per-channel normalisation."""
    from torchvision.transforms.functional import gaussian_blur

    if sigma == 0:
        return pixels
    size = blur_kernel_size(sigma, pixels.shape[-2], pixels.shape[-1])
    return gaussian_blur(pixels, kernel_size=[size, size], sigma=[sigma, sigma])


# ---------------------------------------------------------------------- predictions under a perturbation
TEXT_PERTURBATIONS: dict[str, tuple[str, Callable[[str, float, random.Random], str]]] = {
    "token_dropout": ("token_dropout", token_dropout),
    "typos": ("typo_rate", typos),
}
IMAGE_PERTURBATIONS = {"noise": "noise_std", "blur": "blur_sigma"}
DESCRIPTIONS = {
    "token_dropout": "each word dropped with probability {s:g}",
    "typos": "each letter given a keyboard typo with probability {s:g}",
    "noise": "gaussian pixel noise, std {s:g} (pixel range 0-1)",
    "blur": "gaussian blur, sigma {s:g} pixels",
}


def _text_predictions(ctx: Any, texts: list[Any]) -> torch.Tensor:
    # Length-sorted chunks: little padding per forward pass; predictions go back to split order.
    preds = torch.empty(len(texts), dtype=torch.long)
    lengths = [sum(map(len, text)) if is_pair([text]) else len(text) for text in texts]
    for chunk in length_batches(lengths, TEXT_CHUNK):
        logits = ctx.logits_of(ctx.encode([texts[i] for i in chunk]), batch_size=TEXT_CHUNK)
        preds[chunk] = logits.argmax(-1)
    return preds


def perturb_input(perturb: Callable[[str, float, random.Random], str], text: Any, strength: float,
                  rng: random.Random) -> Any:
    """A text perturbed; a sentence pair with each of its two texts perturbed (first, then second)."""
    if is_pair([text]):
        return tuple(perturb(part, strength, rng) for part in text)
    return perturb(text, strength, rng)


def perturbed_predictions(ctx: Any, name: str, strength: float, seed: int) -> torch.Tensor:
    """Predictions (split order) on the report split with perturbation ``name`` at ``strength``."""
    if name in TEXT_PERTURBATIONS:
        perturb = TEXT_PERTURBATIONS[name][1]
        rng = random.Random(seed)
        return _text_predictions(ctx, [perturb_input(perturb, text, strength, rng) for text in ctx.texts()])
    if name not in IMAGE_PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}: choose from {[*TEXT_PERTURBATIONS, *IMAGE_PERTURBATIONS]}")
    generator = torch.Generator().manual_seed(seed)
    n = len(ctx.test.labels)
    preds = []
    for start in range(0, n, IMAGE_CHUNK):
        pixels = ctx.pixels(list(range(start, min(start + IMAGE_CHUNK, n))))
        pixels = add_noise(ctx, pixels, strength, generator) if name == "noise" else blur(pixels, strength)
        preds.append(ctx.logits_of({"pixel_values": pixels}, batch_size=IMAGE_CHUNK).argmax(-1))
    return torch.cat(preds)


def _fraction(mask: torch.Tensor) -> float:
    return int(mask.sum()) / len(mask) if len(mask) else 0.0


def evaluate_perturbation(ctx: Any, name: str, strength: float, repeats: int = 1) -> dict[str, Any]:
    """Accuracy and flip rate (vs ``ctx.test.preds``) under one perturbation, averaged over ``repeats``
    seeded draws (repeat ``r`` uses seed ``ctx.seed + r``; blur is deterministic and runs once)."""
    repeats = 1 if name == "blur" else repeats
    labels, clean = ctx.test.labels, ctx.test.preds
    accuracies, flips = [], []
    for r in range(repeats):
        preds = perturbed_predictions(ctx, name, strength, ctx.seed + r)
        accuracies.append(_fraction(preds == labels))
        flips.append(_fraction(preds != clean))
    return {"name": name, "strength": float(strength), "accuracy": sum(accuracies) / repeats,
            "flip_rate": sum(flips) / repeats, "repeats": repeats,
            "accuracy_range": [min(accuracies), max(accuracies)],
            "description": DESCRIPTIONS[name].format(s=strength)}


# ---------------------------------------------------------------------- settings and the section
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with defaults filled in; a clear ConfigError naming the bad one."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"report.robustness.{unknown[0]} is not a robustness setting; known: {sorted(DEFAULTS)}.")
    out = {**DEFAULTS, **{k: v for k, v in settings.items()}}
    for key, upper, what in (("token_dropout", 1.0, "a probability in [0, 1]"),
                             ("typo_rate", 1.0, "a probability in [0, 1]"),
                             ("noise_std", 1.0, "a noise std in [0, 1] pixel units"),
                             ("blur_sigma", math.inf, "a blur sigma in pixels (>= 0)")):
        value = out[key]
        if value is None:
            continue
        if not _number(value) or not 0 <= value <= upper:
            raise ConfigError(f"report.robustness.{key}={value!r} must be {what}; 0 or null turns it off.")
        out[key] = float(value)
    repeats = out["repeats"]
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"report.robustness.repeats={repeats!r} must be a positive integer (seeded repetitions "
                          "of each random perturbation).")
    return out


def section(ctx: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``{"seed", "n", "clean_accuracy", "perturbations": [{"name", "strength", "accuracy", "flip_rate"}]}``
    for the perturbations of the model's modality whose strength is set (0 or null leaves one out)."""
    cfg = check_settings(dict(settings or {}))
    if ctx.modality == "text":
        names = {name: key for name, (key, _) in TEXT_PERTURBATIONS.items()}
    elif ctx.modality == "image":
        names = IMAGE_PERTURBATIONS
    else:
        raise NotImplementedError(f"robustness has no perturbations for modality {ctx.modality!r}")
    perturbations = [evaluate_perturbation(ctx, name, cfg[key], cfg["repeats"])
                     for name, key in names.items() if cfg[key]]
    labels = ctx.test.labels
    return {"seed": int(ctx.seed), "n": len(labels),
            "clean_accuracy": _fraction(ctx.test.preds == labels),
            "repeats": cfg["repeats"], "perturbations": perturbations}


# -------------------------------------------------------------------------------------------- page

TITLE = "Robustness"
HOW = """How much small, meaning-preserving changes to the input matter, on {n} examples (seed
    {seed}). Flip rate is the share of predictions that change under the perturbation; a robust model
    keeps both its accuracy and its predictions."""


def render(data: dict[str, Any]) -> str:
    clean = data.get("clean_accuracy")
    rows = [["clean (no perturbation)", MISSING, num(clean), MISSING, MISSING]]
    for p in data.get("perturbations") or []:
        acc = p.get("accuracy")
        change = f"{acc - clean:+.3f}" if is_num(acc) and is_num(clean) else MISSING
        rows.append([esc(p.get("name")), num(p.get("strength")), num(acc), change,
                     num(p.get("flip_rate"))])
    scores = table(["perturbation", "strength", "accuracy", "change vs clean", "flip rate"], rows)
    return how(HOW, n=num(data.get("n")), seed=num(data.get("seed"))) + scores
