"""Gallery features for the search benchmark: synthetic, but shaped like a trained model's.

A million real videos cannot be encoded on a CPU, and random vectors would make the
first stage look better or worse than it is: what decides its recall is how well the
pooled score agrees with the token-wise one, which depends on how frames of a video
relate to each other and to captions. So the gallery is drawn *around the features a
trained model gives the synthetic benchmark* (:class:`Centres`):

- each generated video starts from one real video's frames (its *centre*), mixed with a
  second real video's frames by a weight ``lambda ~ U(0, mix)`` (so videos form a
  continuum, not copies of 1,300 originals), resampled to the gallery's frame count;
- it is lifted to the gallery width by a fixed random isometry ``R`` (d -> D, so every
  cosine between real features is kept) and gets isotropic noise of ``noise`` times each
  frame's norm (new detail the centre does not have);
- queries are the real captions' token features, lifted by the same ``R``;
- the benchmark model's token-wise similarity gets the trained model's token-weight
  MLPs, embedded exactly through ``R`` (:func:`embed_similarity`), so a lifted video
  gets the frame weights the trained model gives its centre. With random weight MLPs
  the pooled and token-wise scores agree far less than on real data.

Everything is a pure function of ``seed`` and the row range, so chunks can be generated
in any order and the same gallery comes back for the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffret_cli.model.diffusionret import TextFeatures


@dataclass
class Centres:
    """A trained model's features of a benchmark: videos (after the temporal
    transformer) and captions."""

    frames: np.ndarray  # [V, T0, d] float32
    lengths: np.ndarray  # [V] int
    tokens: np.ndarray  # [C, L, d] float32
    token_mask: np.ndarray  # [C, L] int64
    cls: np.ndarray  # [C, d] float32
    caption_video: np.ndarray  # [C] index into frames
    captions: list[str]
    #: the trained token-wise similarity's state (its two token-weight MLPs)
    similarity: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        from diffret_cli.fileio import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, frames=self.frames, lengths=self.lengths, tokens=self.tokens, token_mask=self.token_mask,
                     cls=self.cls, caption_video=self.caption_video, captions=np.asarray(self.captions),
                     **{f"similarity/{k}": v for k, v in self.similarity.items()})

    @classmethod
    def load(cls, path: Path) -> "Centres":
        with np.load(path, allow_pickle=False) as z:
            sim = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("similarity/")}
            return cls(z["frames"], z["lengths"], z["tokens"], z["token_mask"], z["cls"], z["caption_video"],
                       [str(c) for c in z["captions"]], sim)


@torch.no_grad()
def centres_from_model(model, *, dataset: str = "synthetic", splits: tuple[str, ...] = ("train", "val", "test"),
                       query_split: str = "test", data_root=None, batch_size: int = 32) -> Centres:
    """Encode a prepared dataset's videos (every split in ``splits``) and the captions of
    ``query_split`` with ``model`` (a trained one: that is the point)."""
    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.features import SplitTexts, encode_texts, encode_videos

    data = PreparedDataset.open(data_root, dataset)
    dev = next(model.parameters()).device
    frames, masks, offset, qsplit_offset = [], [], 0, 0
    for s in splits:
        sp = data.split(s)
        v = encode_videos(model.eval(), sp, batch_size=batch_size, device=dev)
        if s == query_split:
            qsplit_offset = offset
        frames.append(v.frames.float().cpu())
        masks.append(v.mask.cpu())
        offset += len(sp.videos)
    texts = SplitTexts.from_split(data.split(query_split))
    tf = encode_texts(model, texts.captions, batch_size=256, device=dev)
    return Centres(torch.cat(frames).numpy(), torch.cat(masks).sum(1).numpy().astype(np.int64),
                   tf.tokens.float().cpu().numpy(), tf.mask.cpu().numpy().astype(np.int64),
                   tf.cls.float().cpu().numpy(), texts.caption_video + qsplit_offset, list(texts.captions),
                   {k: v.float().cpu().numpy() for k, v in model.similarity.state_dict().items()})


class Lift:
    """A fixed random isometry from the centres' width ``d`` to the gallery's ``D``."""

    def __init__(self, d: int, width: int, *, seed: int = 0):
        if width < d:
            raise ValueError(f"cannot lift width {d} features to a narrower {width}")
        g = np.random.default_rng([seed, 0xA11])
        q, _ = np.linalg.qr(g.standard_normal((width, d)))
        self.r = q.T.astype(np.float32)  # [d, D], orthonormal rows

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.r


@torch.no_grad()
def embed_similarity(model, centres: Centres, lift: Lift) -> None:
    """Give ``model``'s token-wise similarity (width D) the trained weight MLPs of width d.

    Each MLP is ``Linear(d, 2d) -> ReLU -> Linear(2d, 1)``. For lifted inputs ``x' = x R``
    (``R R^T = I``) the first layer ``W1' = W1 R`` in the first 2d hidden units (the other
    units get zero weights and bias: ReLU(0) = 0 adds nothing) and the second layer's
    weights on those units reproduce the trained logits exactly: ``x' W1'^T = x W1^T``.
    """
    r = torch.from_numpy(lift.r)
    for name in ("text_weight_fc", "video_weight_fc"):
        fc = getattr(model.similarity, name)
        w1, b1 = (torch.from_numpy(centres.similarity[f"{name}.0.{k}"]) for k in ("weight", "bias"))
        w2, b2 = (torch.from_numpy(centres.similarity[f"{name}.2.{k}"]) for k in ("weight", "bias"))
        h = w1.shape[0]
        if h > fc[0].weight.shape[0]:
            raise ValueError(f"the trained {name} is wider ({h}) than the benchmark model's")
        for p in fc.parameters():
            p.zero_()
        fc[0].weight[:h] = w1 @ r
        fc[0].bias[:h] = b1
        fc[2].weight[:, :h] = w2
        fc[2].bias[:] = b2


def _resample(length: int, count: int) -> np.ndarray:
    return np.linspace(0, length - 1, count).round().astype(np.int64)


@dataclass
class GalleryGenerator:
    centres: Centres
    lift: Lift
    frames: int = 12  # gallery max frames (ViT-B/32 DiffusionRet: 12)
    noise: float = 0.5  # isotropic noise, times each frame's norm
    mix: float = 0.5  # upper bound of the second video's weight
    seed: int = 0

    def chunk(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, start + count): (frames [count, T, D] float32, lengths [count])."""
        c = self.centres
        g = np.random.default_rng([self.seed, start])
        v = len(c.frames)
        a, b = g.integers(v, size=count), g.integers(v, size=count)
        lam = g.uniform(0.0, self.mix, size=count).astype(np.float32)
        t0 = c.frames.shape[1]
        out_len = np.clip(np.round(c.lengths[a] * self.frames / t0), 1, self.frames).astype(np.int64)
        small = np.zeros((count, self.frames, c.frames.shape[2]), np.float32)
        for i in range(count):  # per video: its frames resampled onto its own length
            n = out_len[i]
            fa = c.frames[a[i], _resample(int(c.lengths[a[i]]), n)]
            fb = c.frames[b[i], _resample(int(c.lengths[b[i]]), n)]
            small[i, :n] = (1.0 - lam[i]) * fa + lam[i] * fb
            small[i, n:] = small[i, n - 1]  # padding: masked everywhere, any finite value
        big = self.lift(small.reshape(-1, small.shape[-1])).reshape(count, self.frames, -1)
        norm = np.linalg.norm(big, axis=-1, keepdims=True)
        eps = g.standard_normal(big.shape, dtype=np.float32)
        big += self.noise * norm * eps / np.sqrt(big.shape[-1], dtype=np.float32)
        return big, out_len

    def queries(self, idx: np.ndarray) -> TextFeatures:
        """Lifted caption features of captions ``idx`` (the benchmark's queries)."""
        c = self.centres
        tok = self.lift(c.tokens[idx].reshape(-1, c.tokens.shape[-1])).reshape(len(idx), c.tokens.shape[1], -1)
        return TextFeatures(torch.from_numpy(tok), torch.from_numpy(self.lift(c.cls[idx])),
                            torch.from_numpy(c.token_mask[idx]))
