"""Where ESM-2 weights come from: a fair-esm checkpoint file, the torch hub cache, or explicit random weights.

Weights are returned as a state dict with fair-esm's module names (prefixes `encoder.sentence_encoder.` and
`encoder.` stripped, as fair-esm does), plus the architecture read from the checkpoint's own config, plus
provenance for the output files. Random weights are never a fallback: they must be asked for.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from virnucpro.errors import UserError
from virnucpro.utils.digests import remembered_sha256

logger = logging.getLogger("virnucpro.models.weights")


@dataclass(frozen=True)
class ModelSpec:
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True
    vocab_size: int = 33  # fair-esm's ESM-1b alphabet, used by every ESM-2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads

    def flops_per_token(self, mean_tokens: float) -> float:
        """Forward FLOPs per token: 2 per layer weight (the 4 projections, 12 d^2 a layer) plus attention's
        QK^T and PV (4 d per key, for a sequence of `mean_tokens`); embedding and norms are negligible."""
        return self.num_layers * (2 * 12 * self.embed_dim**2 + 4 * mean_tokens * self.embed_dim)


#: fair-esm's published ESM-2 models.
ARCHITECTURES = {
    "esm2_t6_8M_UR50D": ModelSpec(6, 320, 20),
    "esm2_t12_35M_UR50D": ModelSpec(12, 480, 20),
    "esm2_t30_150M_UR50D": ModelSpec(30, 640, 20),
    "esm2_t33_650M_UR50D": ModelSpec(33, 1280, 20),
    "esm2_t36_3B_UR50D": ModelSpec(36, 2560, 40),
    "esm2_t48_15B_UR50D": ModelSpec(48, 5120, 40),
}

DEFAULT_MODEL = "esm2_t36_3B_UR50D"  # what VirNucPro embeds with

_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
#: What real fair-esm checkpoints pickle besides tensors; nothing else is allowed to load.
SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class Weights:
    spec: ModelSpec
    state_dict: Mapping[str, torch.Tensor]  # a dict, or a RandomStateDict that generates on reading
    provenance: dict  # {"weights": "random"|"checkpoint", "path", "sha256", "seed", ...}


def _spec_from_cfg(cfg, path: Path) -> ModelSpec:
    try:
        return ModelSpec(
            int(cfg.encoder_layers),
            int(cfg.encoder_embed_dim),
            int(cfg.encoder_attention_heads),
            bool(getattr(cfg, "token_dropout", True)),
        )
    except AttributeError as exc:
        raise UserError(f"{path}: not an ESM-2 checkpoint (its cfg lacks {exc.name})") from None


def _expected_shape(key: str, spec: ModelSpec) -> tuple[int, ...]:
    """Shape of a required weight in fair-esm's ESM2 (feed-forward width 4 x embed_dim)."""
    d = spec.embed_dim
    if key == "embed_tokens.weight":
        return (spec.vocab_size, d)
    if key.endswith("fc1.weight"):
        return (4 * d, d)
    if key.endswith("fc1.bias"):
        return (4 * d,)
    if key.endswith("fc2.weight"):
        return (d, 4 * d)
    return (d, d) if key.endswith("_proj.weight") else (d,)


def _check_esm2_layout(path: Path, spec: ModelSpec, state: dict) -> None:
    """Refuse what only looks like ESM-2: ESM-1 family weights, or a cfg that disagrees with the tensors."""
    if "embed_positions.weight" in state or "emb_layer_norm_before.weight" in state:
        raise UserError(f"{path}: learned positional embeddings: an ESM-1/ESM-1b/ESM-1v model, not ESM-2")
    if spec.embed_dim % spec.attention_heads:
        raise UserError(f"{path}: embed_dim {spec.embed_dim} is not a multiple of {spec.attention_heads} heads")
    missing = [k for k in required_keys(spec) if k not in state]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {missing[0]}")
    for key in required_keys(spec):
        want, got = _expected_shape(key, spec), tuple(state[key].shape)
        if got != want:
            raise UserError(
                f"{path}: weight {key} has shape {list(got)} where an ESM-2 of {spec.num_layers} "
                f"layers x {spec.embed_dim} (its cfg) has {list(want)}"
            )


def known_architecture(spec: ModelSpec) -> str | None:
    """The published fair-esm model with exactly this architecture, if any."""
    return next((name for name, known in ARCHITECTURES.items() if known == spec), None)


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in a few words: a weights-only refusal's own cause, not its advice to load the file
    with weights_only=False (wrong for a file that is no checkpoint, unsafe for one that is)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        cause = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
        return f"not a PyTorch file, or one holding objects a weights-only load refuses: {cause}"
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load_checkpoint(path: str | Path, known_sha256: str | None = None) -> Weights:
    """Load a fair-esm ESM-2 checkpoint (`esm2_*.pt`) with `weights_only=True` (memory-mapped when it can be).

    The `-contact-regression.pt` neighbour is not needed for embeddings and is ignored. `known_sha256` skips
    re-hashing a file the parent process already hashed (ranks of one job); other jobs find the digest in the
    user's cache while the file is unchanged (`utils.digests`). Files in torch's legacy (pre-1.6, non-zip) format
    cannot be memory-mapped and are read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as exc:  # pickle errors, truncated files, foreign globals: all say the same to the user
        raise UserError(f"{path}: cannot load as a fair-esm checkpoint ({_load_failure(exc)})") from None
    if isinstance(data, dict) and "args" in data and "cfg" not in data:
        raise UserError(
            f"{path}: a fair-esm v1 checkpoint ('args', no 'cfg': ESM-1b, ESM-1v, MSA Transformer...), not ESM-2"
        )
    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        raise UserError(f"{path}: not a fair-esm checkpoint (expected keys 'cfg' and 'model')")
    cfg = data["cfg"]["model"] if isinstance(data["cfg"], dict) else getattr(data["cfg"], "model", None)
    spec = _spec_from_cfg(cfg, path)
    state = {_PREFIX.sub("", k): v for k, v in data["model"].items()}
    _check_esm2_layout(path, spec, state)
    digest = known_sha256 or remembered_sha256(path)
    return Weights(spec, state, {"weights": "checkpoint", "path": str(path.resolve()), "sha256": digest})


def _checkpoint_model_name(path: Path, spec: ModelSpec, quiet: bool) -> str:
    """The model a checkpoint holds as recorded in the output: decided by its cfg, and said when the file name
    is not a published model's name or names another one (ranks, `quiet`, reload what the parent reported)."""
    arch = known_architecture(spec)
    shape = f"{spec.num_layers} layers, {spec.embed_dim}-dim, {spec.attention_heads} heads"
    said = f"{arch}'s architecture ({shape})" if arch else f"an ESM-2 of no published size ({shape})"
    if path.stem == arch:
        logger.info("%s: %s", path, said)
        return arch
    if path.stem in ARCHITECTURES:  # a renamed file: the name would label the output with the wrong model
        name = arch or f"custom ESM-2 ({shape})"
        reason = f"its name says {path.stem} but its cfg is {said}"
    else:
        name, reason = path.stem, f"its name is no published model's; its cfg is {said}"
    if not quiet:
        logger.warning("checkpoint %s: %s; recorded as model %r", path, reason, name)
    return name


def hub_checkpoint_path(model_name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{model_name}.pt"


def required_keys(spec: ModelSpec) -> list[str]:
    """The fair-esm state-dict keys the embedding forward needs (no LM or contact head)."""
    keys = ["embed_tokens.weight", "emb_layer_norm_after.weight", "emb_layer_norm_after.bias"]
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        for mod in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
            "self_attn_layer_norm",
            "final_layer_norm",
        ):
            keys += [p + mod + ".weight", p + mod + ".bias"]
    return keys


#: Names the random-weight recipe in the provenance (and so in the run's fingerprint): results and checkpoint
#: chunks made with another recipe for the same seed are other weights.
RANDOM_RECIPE = "per-tensor normal(0, 0.02), seed from sha256(seed:name)"


def _random_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    d, ff = spec.embed_dim, 4 * spec.embed_dim
    shapes = {"embed_tokens.weight": (spec.vocab_size, d)}
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        for mod in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{mod}.weight"] = (d, d)
            shapes[p + f"self_attn.{mod}.bias"] = (d,)
        shapes.update(
            {p + "fc1.weight": (ff, d), p + "fc1.bias": (ff,), p + "fc2.weight": (d, ff), p + "fc2.bias": (d,)}
        )
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[p + ln + ".weight"] = (d,)
            shapes[p + ln + ".bias"] = (d,)
    shapes["emb_layer_norm_after.weight"] = (d,)
    shapes["emb_layer_norm_after.bias"] = (d,)
    return shapes


class RandomStateDict(Mapping):
    """Deterministic random weights (fp32), each tensor generated when it is read, from its own seed.

    Why lazy: a consumer that casts tensor by tensor (the model build, fair-esm's per-tensor copy) then never
    holds the whole model in fp32 -- 60 GB for ESM-2 15B, which left no room for its 30 GB bf16 copy on an
    80 GB card. Each tensor's generator is seeded from (seed, name), so the values do not depend on the order
    of reading. Same seed and device type, same weights. Linear weights and biases ~ N(0, 0.02), layer norm
    weights around 1: activations stay in range through 48 layers.
    """

    def __init__(self, spec: ModelSpec, seed: int, device: torch.device | str = "cpu"):
        self.shapes, self.seed, self.device = _random_shapes(spec), seed, torch.device(device)

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]  # KeyError for unknown names, as a dict
        tensor_seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{name}".encode()).digest()[:8], "little") >> 1
        gen = torch.Generator(device=self.device).manual_seed(tensor_seed)
        t = torch.randn(shape, generator=gen, device=self.device) * 0.02
        if "layer_norm" in name and name.endswith(".weight"):
            t += 1.0
        return t

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def random_state_dict(spec: ModelSpec, seed: int, device: torch.device | str = "cpu") -> RandomStateDict:
    """Random weights for throughput work, generated on `device` as they are read (see `RandomStateDict`)."""
    return RandomStateDict(spec, seed, device)


def resolve_weights(
    model_name: str | None,
    checkpoint: str | None,
    random_weights: bool,
    seed: int,
    device: torch.device | str = "cpu",
    materialize: bool = True,
    known_sha256: str | None = None,
) -> Weights:
    """Pick the weights source the user asked for; random only when `random_weights` is set.

    `materialize=False` returns random weights' spec and provenance without generating them (a launcher
    that only needs to validate and fingerprint).
    """
    if checkpoint and random_weights:
        raise UserError("--checkpoint and --random-weights exclude each other")
    label = bool(checkpoint) and model_name == Path(checkpoint).stem  # the name the output records for it anyway
    if model_name and model_name not in ARCHITECTURES and not label:
        raise UserError(f"unknown model {model_name!r}; choose one of {', '.join(ARCHITECTURES)}")
    if checkpoint:
        weights = load_checkpoint(checkpoint, known_sha256)
        if model_name in ARCHITECTURES and ARCHITECTURES[model_name] != weights.spec:
            raise UserError(f"{checkpoint}: its architecture {asdict(weights.spec)} is not {model_name}'s")
        weights.provenance["model"] = _checkpoint_model_name(Path(checkpoint), weights.spec, quiet=bool(known_sha256))
        return weights
    model_name = model_name or DEFAULT_MODEL
    spec = ARCHITECTURES[model_name]
    if random_weights:
        device = torch.device(device)
        state = random_state_dict(spec, seed, device) if materialize else {}
        return Weights(
            spec,
            state,
            {
                "weights": "random",
                "model": model_name,
                "seed": seed,
                "generated_on": device.type,
                "recipe": RANDOM_RECIPE,
            },
        )
    cached = hub_checkpoint_path(model_name)
    if cached.is_file():
        weights = load_checkpoint(cached, known_sha256)
        weights.provenance["model"] = model_name
        return weights
    raise UserError(
        f"no weights for {model_name}: not in the torch hub cache ({cached}); pass --checkpoint PATH to a "
        f"fair-esm {model_name}.pt, or --random-weights for throughput measurements only"
    )


class OutlierStateDict(Mapping):
    """`base` with a few hidden channels made `magnitude` times larger where every block's linear layers read
    them: the weight and bias of both pre-norms (`self_attn_layer_norm`, `final_layer_norm`) in every layer.

    Why this resembles trained transformers: they develop a handful of hidden dimensions whose layer-norm outputs
    (the inputs of the q/k/v and fc1 projections) are one to two orders of magnitude larger than the rest, in the
    same dimensions across tokens and layers (LLM.int8, Dettmers et al. 2022; "massive activations", Sun et al.
    2024), which is what breaks per-tensor 8-bit activation scales. Random weights have none, so a precision
    checked on them alone is checked on the easy case. Read lazily, like the weights it wraps.
    """

    def __init__(self, base: Mapping, embed_dim: int, channels: int, magnitude: float, seed: int):
        self.base, self.magnitude = base, float(magnitude)
        gen = torch.Generator().manual_seed(seed)
        self.channels = sorted(torch.randperm(embed_dim, generator=gen)[:channels].tolist())

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self.base[name]
        if name.startswith("layers.") and ("self_attn_layer_norm." in name or "final_layer_norm." in name):
            t = t.clone()
            t[self.channels] *= self.magnitude
        return t

    def __iter__(self):
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def write_fairesm_checkpoint(
    path: Path, num_layers: int = 2, embed_dim: int = 64, heads: int = 4, seed: int = 0
) -> Path:
    """Write `path` (stem must start with 'esm2') and its -contact-regression.pt neighbour like fair-esm's files.

    Every parameter gets random values (not fair-esm's init, whose zero biases and unit norms would hide bugs).
    For tests and checks that need the same weights on every device: `--random-weights` generates them with the
    device's own generator, so CPU and CUDA runs of it embed with different weights.
    """
    from esm.model.esm2 import ESM2

    gen = torch.Generator().manual_seed(seed)
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=heads)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + noise if "layer_norm" in name and name.endswith("weight") else noise)
    state = model.state_dict()
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.")}
    packed = {("encoder." if k.startswith("lm_head") else "encoder.sentence_encoder.") + k: v for k, v in state.items()}
    cfg = argparse.Namespace(
        encoder_layers=num_layers,
        encoder_embed_dim=embed_dim,
        encoder_attention_heads=heads,
        token_dropout=True,
        arch="roberta_large",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": {"model": cfg}, "model": packed}, path)
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    return path
