"""``synthetic`` and ``synthetic-shift``: a procedurally generated text-video benchmark.

Why it exists: a fresh machine with no downloads can still train and evaluate end to end,
and a tiny model trained from scratch on a CPU learns it well above chance, while no
single word solves it.

What a video is. A grey background and 2-3 *events* that happen one after another; each
event is one object (colour x shape x size) doing one motion, on screen only during its
own event. Frames are drawn with numpy at one frame per second of video time
(``seconds_per_event`` frames per event), at ``frame_size`` x ``frame_size`` pixels.
The frames are stored at this native size (64 x 64 by default): the prepare pipeline
resizes them only when asked to.

What a caption is. ``captions_per_video`` distinct sentences from templates with
paraphrases (synonyms, connectives, clause order: "X after Y"), compositional in the
event attributes and their order. See :data:`TEMPLATES` and the synonym tables.

Hard negatives. Videos come in groups of ``group_size`` consecutive indices: member 0
is a random scene, and every other member differs from it in exactly one attribute
(one event's colour, shape, size or motion, or the order of two adjacent events), drawn
without repetition from :data:`HARD_NEGATIVE_KINDS`. Members share the background, the
layout and the caption wording, so their captions are minimal pairs.

Determinism. Every random draw comes from a generator seeded by ``(seed, domain, split,
group, purpose, ...)``: a video depends only on (seed, split, index) and the rendering
options, never on the split sizes or on other videos, and the same seed gives
byte-identical frames and captions (for a given numpy version).

Distribution shift (``synthetic-shift``). The colour-shape pairs in
:data:`HELD_OUT_PAIRS` never occur in ``synthetic`` (any split). ``synthetic-shift``
train is exactly ``synthetic`` train; its val and test videos each contain at least one
held-out pair, are drawn on textured backgrounds never seen in training
(:data:`~diffret_plugins.datasets.render.TEXTURED_BACKGROUNDS`) and move at a slower
speed (:data:`~diffret_plugins.datasets.render.SLOW`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from diffret_cli.data.types import Protocol, SplitAnnotations, VideoEntry
from diffret_cli.errors import AnnotationError, ConfigError
from diffret_cli.sdk import DatasetPlugin, DownloadSource

from diffret_plugins.datasets import render

# ------------------------------------------------------------------------- attributes
COLOURS = tuple(render.COLOUR_RGB)  # red green blue yellow purple orange
SHAPES = tuple(render.SHAPE_MASKS)  # circle square triangle cross star ring
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down", "grows", "shrinks", "spins", "bounces")
#: a spin of these shapes leaves the pixels unchanged, so they never "spin"
SPIN_INVISIBLE = frozenset({"circle", "ring"})

#: The documented shift partition: colour-shape pairs ``synthetic`` never shows (in any
#: split) and every ``synthetic-shift`` val/test video shows at least once. One pair per
#: colour and per shape (a Latin diagonal), so every colour and every shape is still seen
#: in training, only never in these combinations.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "cross"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("orange", "ring"),
})
ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)

#: what a hard negative changes relative to its group's base video
HARD_NEGATIVE_KINDS = ("colour", "shape", "size", "motion", "order")

# ----------------------------------------------------------------- caption vocabulary
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOUR_WORDS = {"red": ("red",), "green": ("green",), "blue": ("blue",),
                "yellow": ("yellow",), "purple": ("purple", "violet"), "orange": ("orange",)}
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"),
               "triangle": ("triangle",), "cross": ("cross", "plus sign"),
               "star": ("star",), "ring": ("ring", "donut")}
#: (present tense, gerund) paraphrases of each motion
MOTION_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "left": (("moves left", "moving left"), ("slides to the left", "sliding to the left"),
             ("goes left", "going left")),
    "right": (("moves right", "moving right"), ("slides to the right", "sliding to the right"),
              ("goes right", "going right")),
    "up": (("moves up", "moving up"), ("rises", "rising"), ("goes up", "going up")),
    "down": (("moves down", "moving down"), ("falls", "falling"), ("sinks", "sinking")),
    "grows": (("grows", "growing"), ("gets bigger", "getting bigger"),
              ("expands", "expanding")),
    "shrinks": (("shrinks", "shrinking"), ("gets smaller", "getting smaller"),
                ("contracts", "contracting")),
    "spins": (("spins", "spinning"), ("rotates", "rotating"), ("turns", "turning")),
    "bounces": (("bounces", "bouncing"), ("jumps", "jumping"), ("hops", "hopping")),
}
CHAIN_CONNECTIVES = (", then ", ", and then ", "; after that, ", ", next ", ", afterwards ")
SHOW_PREFIXES = ("a video of ", "we see ", "the clip shows ")
SHOW_CONNECTIVES = (", then ", " and then ", ", followed by ")

#: Caption templates for events A, B (, C); ``A`` is a clause ("a small red circle
#: moves left"), ``a`` its gerund form ("a small red circle moving left"):
TEMPLATES = (
    "chain",     # A, then B; after that, C          (connectives: CHAIN_CONNECTIVES)
    "first",     # first A, then|next B, and finally|and lastly C
    "followed",  # a, followed by b, and then c
    "before",    # A before B, then C
    "after",     # B after A, then C                  (surface order is not time order)
    "shows",     # a video of|we see|the clip shows a, then b and then c
)
#: captions longer than this (see :func:`caption_length`) are redrawn, so that they fit
#: the benchmark's ``max_words`` (32 CLIP tokens including start and end of text)
MAX_CAPTION_TOKENS = 30
#: caption words that CLIP's byte-pair encoding splits into two pieces (all others,
#: and every punctuation mark, are one piece)
TWO_PIECE_WORDS = frozenset({"bounces", "lastly", "rotates", "shrinks"})

SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
DOMAIN_CODES = {"in": 0, "shift": 1}
_PURPOSE_BASE, _PURPOSE_KINDS, _PURPOSE_MEMBER, _PURPOSE_CAPTION, _PURPOSE_TEXTURE = range(5)
_TOKEN_RE = re.compile(r"[a-z]+|[^a-z\s]")


def caption_tokens(caption: str) -> list[str]:
    """Words and punctuation marks of a caption."""
    return _TOKEN_RE.findall(caption)


def caption_length(caption: str) -> int:
    """Length in CLIP BPE tokens (without start/end), computed from our closed vocabulary."""
    return sum(2 if w in TWO_PIECE_WORDS else 1 for w in caption_tokens(caption))


def vocabulary() -> frozenset[str]:
    """Every word a caption can contain."""
    phrases: list[str] = ["a", "an", "first", "then", "and", "finally", "lastly", "followed",
                          "by", "before", "after", "that", "next", "afterwards"]
    phrases += SHOW_PREFIXES
    for table in (SIZE_WORDS, COLOUR_WORDS, SHAPE_WORDS):
        for words in table.values():
            phrases += words
    for pairs in MOTION_WORDS.values():
        for present, gerund in pairs:
            phrases += (present, gerund)
    return frozenset(w for p in phrases for w in p.split())


# ---------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Event:
    """One object doing one motion.

    ``ux, uy`` in [0, 1) place it (see ``render.trajectory``); ``wording`` picks its
    synonyms in captions. Both travel with the event when a hard negative reorders
    events, so the reordered video looks and reads the same except for the order.
    """

    colour: str
    shape: str
    size: str
    motion: str
    ux: float
    uy: float
    wording: int = 0

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        """What a caption says about the event: (colour, shape, size, motion)."""
        return (self.colour, self.shape, self.size, self.motion)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    """Everything that determines one video and its captions."""

    video_id: str
    split: str
    index: int
    domain: str  # "in" (synthetic, synthetic-shift train) or "shift"
    group: int
    member: int
    # "base"; the HARD_NEGATIVE_KINDS entry by which it differs from its group's base;
    # or "independent" (fallback when a group has more members than valid kinds)
    change: str
    background: str
    jitter: int
    events: tuple[Event, ...]

    @property
    def attributes(self) -> tuple[tuple[str, str, str, str], ...]:
        """The captioned content, in time order (what hard negatives are defined on)."""
        return tuple(e.attributes for e in self.events)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _motions_for(shape: str) -> tuple[str, ...]:
    return tuple(m for m in MOTIONS if not (m == "spins" and shape in SPIN_INVISIBLE))


def _valid(events: tuple[Event, ...], domain: str) -> bool:
    """The rules every scene of a domain obeys."""
    pairs = [e.pair for e in events]
    if len(set(pairs)) != len(pairs):  # two objects never share colour and shape
        return False
    if any(e.motion == "spins" and e.shape in SPIN_INVISIBLE for e in events):
        return False
    held = [p in HELD_OUT_PAIRS for p in pairs]
    if domain == "in":
        return not any(held)
    return any(held)


def _with(events: tuple[Event, ...], i: int, **change: Any) -> tuple[Event, ...]:
    e = events[i]
    new = Event(**{**e.__dict__, **change})
    return events[:i] + (new,) + events[i + 1:]


def _neighbours(events: tuple[Event, ...], kind: str, domain: str) -> list[tuple[Event, ...]]:
    """All valid scenes that differ from ``events`` in exactly one ``kind`` change."""
    out: list[tuple[Event, ...]] = []
    n = len(events)
    if kind == "order":
        cands = [events[:i] + (events[i + 1], events[i]) + events[i + 2:] for i in range(n - 1)]
    else:
        cands = []
        values = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "motion": MOTIONS}[kind]
        for i, e in enumerate(events):
            for v in values:
                if v != getattr(e, kind):
                    cands.append(_with(events, i, **{kind: v}))
    for c in cands:
        if _valid(c, domain):
            out.append(c)
    return out


# --------------------------------------------------------------------------- captions
def _article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def _compose(events: tuple[Event, ...], rng: np.random.Generator) -> str:
    """One caption. Draws a fixed number of numbers whatever the content, so group
    members (which share the generator seed) get the same wording: minimal pairs."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    u = rng.random(4 * 3 + 4)  # 4 per event slot (at most 3), then 4 for the sentence

    def choose(options, x: float):
        return options[min(int(x * len(options)), len(options) - 1)]

    clauses, gerunds = [], []
    for e in events:
        s, c, h, m = u[4 * e.wording: 4 * e.wording + 4]
        words = f"{choose(SIZE_WORDS[e.size], s)} {choose(COLOUR_WORDS[e.colour], c)} " \
                f"{choose(SHAPE_WORDS[e.shape], h)}"
        np_ = f"{_article(words)} {words}"
        present, gerund = choose(MOTION_WORDS[e.motion], m)
        clauses.append(f"{np_} {present}")
        gerunds.append(f"{np_} {gerund}")
    g = u[12:]
    n = len(events)
    if n == 1:
        if template in ("followed", "shows"):
            return choose(SHOW_PREFIXES, g[0]) + gerunds[0]
        return clauses[0]
    if template == "chain":
        text = clauses[0]
        for k in range(1, n):
            text += choose(CHAIN_CONNECTIVES, g[k - 1]) + clauses[k]
        return text
    if template == "first":
        text = f"first {clauses[0]}, {choose(('then', 'next'), g[0])} {clauses[1]}"
        if n == 3:
            text += f", {choose(('and finally', 'and lastly'), g[1])} {clauses[2]}"
        return text
    if template == "followed":
        text = f"{gerunds[0]}, followed by {gerunds[1]}"
        return text + (f", and then {gerunds[2]}" if n == 3 else "")
    if template == "before":
        return f"{clauses[0]} before {clauses[1]}" + (f", then {clauses[2]}" if n == 3 else "")
    if template == "after":
        return f"{clauses[1]} after {clauses[0]}" + (f", then {clauses[2]}" if n == 3 else "")
    # "shows"
    text = choose(SHOW_PREFIXES, g[2]) + gerunds[0]
    for k in range(1, n):
        text += choose(SHOW_CONNECTIVES, g[k - 1]) + gerunds[k]
    return text


def _canonical(events: tuple[Event, ...]) -> str:
    """The shortest wording, used only if every random draw was too long."""
    parts = []
    for e in events:
        words = f"{SIZE_WORDS[e.size][0]} {e.colour} {SHAPE_WORDS[e.shape][0]}"
        parts.append(f"{_article(words)} {words} {MOTION_WORDS[e.motion][0][0]}")
    return ", then ".join(parts)


# ----------------------------------------------------------------------------- plugin
_ID_RE = re.compile(r"^(?P<prefix>[a-z]+)-(?P<split>[a-z]+)-(?P<index>\d+)$")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
            or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"synthetic option {name}={value!r} is invalid: expected an integer {rng}",
                          hint=f"set {name} to an integer {rng}")
    return int(value)


class Synthetic(DatasetPlugin):
    """Procedurally generated videos of shapes performing sequential motions.

    ``load_split`` ignores ``source`` (nothing is read) and ``generate`` draws a video's
    frames from its id, e.g. ``syn-test-00042``. Frames are ``uint8 [T, S, S, 3]`` with
    ``T = events * seconds_per_event`` (one frame per second) and ``S = frame_size``,
    stored at native size.
    """

    name: ClassVar[str] = "synthetic"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    protocol: ClassVar[Protocol] = "multi"
    max_words: ClassVar[int] = 32
    max_frames: ClassVar[int] = 12
    downloads: ClassVar[tuple[DownloadSource, ...] | None] = None
    download_note: ClassVar[str] = "generated locally; nothing to download"
    #: video ids look like ``{id_prefix}-{split}-{index:05d}``
    id_prefix: ClassVar[str] = "syn"

    def __init__(self, *, seed: int = 0, num_train: int = 1000, num_val: int = 100,
                 num_test: int = 200, captions_per_video: int = 4, frame_size: int = 64,
                 min_events: int = 2, max_events: int = 3, seconds_per_event: int = 3,
                 group_size: int = 4) -> None:
        self.seed = _check_int("seed", seed, 0)
        self.num_train = _check_int("num_train", num_train, 0)
        self.num_val = _check_int("num_val", num_val, 0)
        self.num_test = _check_int("num_test", num_test, 0)
        self.captions_per_video = _check_int("captions_per_video", captions_per_video, 1, 20)
        self.frame_size = _check_int("frame_size", frame_size, 16, 1024)
        # at most 3 events: longer captions would not fit max_words tokens
        self.min_events = _check_int("min_events", min_events, 1, 3)
        self.max_events = _check_int("max_events", max_events, 1, 3)
        if self.max_events < self.min_events:
            raise ConfigError(f"synthetic options min_events={self.min_events} and "
                              f"max_events={self.max_events}: min_events is larger",
                              hint="set min_events <= max_events (both in [1, 3])")
        self.seconds_per_event = _check_int("seconds_per_event", seconds_per_event, 2, 20)
        # base + at most one neighbour per kind (1 disables hard-negative groups)
        self.group_size = _check_int("group_size", group_size, 1, 1 + len(HARD_NEGATIVE_KINDS))

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_train": self.num_train, "num_val": self.num_val,
                "num_test": self.num_test, "captions_per_video": self.captions_per_video,
                "frame_size": self.frame_size, "min_events": self.min_events,
                "max_events": self.max_events, "seconds_per_event": self.seconds_per_event,
                "group_size": self.group_size}

    # ---------------------------------------------------------------- domain per split
    def domain(self, split: str) -> str:
        """"in" everywhere for ``synthetic``; ``synthetic-shift`` overrides val/test."""
        return "in"

    # ---------------------------------------------------------------------- splits/ids
    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise AnnotationError(f"{self.name} has no split {split!r}",
                                  hint=f"use one of: {', '.join(self.splits)}")

    def num_videos(self, split: str) -> int:
        self._check_split(split)
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

    def video_id(self, split: str, index: int) -> str:
        return f"{self.id_prefix}-{split}-{index:05d}"

    def parse_video_id(self, video_id: str) -> tuple[str, int]:
        """(split, index) of one of this dataset's ids; AnnotationError otherwise."""
        m = _ID_RE.match(video_id)
        expected = f"'{self.id_prefix}-<split>-<index>' with split in {', '.join(self.splits)}"
        if not m or m["prefix"] != self.id_prefix or m["split"] not in self.splits:
            raise AnnotationError(f"{self.name}: video id {video_id!r} is not one of this "
                                  f"dataset's ids (expected {expected})",
                                  hint=f"pass an entry returned by {self.name}'s load_split")
        split, index = m["split"], int(m["index"])
        if index >= self.num_videos(split):
            raise AnnotationError(
                f"{self.name}: video id {video_id!r} is outside split {split!r}, which has "
                f"{self.num_videos(split)} videos with these options",
                hint=f"use the same num_{split} that listed this id")
        return split, index

    def annotation_files(self, split: str) -> list[str]:
        """Empty: captions are generated, nothing is read."""
        self._check_split(split)
        return []

    def video_dirs(self) -> list[str]:
        return []

    def locate_video(self, source: Path, entry: VideoEntry) -> Path | None:
        """Always None: frames come from :meth:`generate`, there are no video files."""
        return None

    # -------------------------------------------------------------------------- scenes
    def _key(self, split: str) -> tuple[int, int, int]:
        return (self.seed, DOMAIN_CODES[self.domain(split)], SPLIT_CODES[split])

    def _base(self, split: str, group: int, variant: int = 0) -> tuple[str, int, tuple[Event, ...]]:
        domain = self.domain(split)
        rng = _rng(*self._key(split), group, _PURPOSE_BASE, variant)
        n = int(rng.integers(self.min_events, self.max_events + 1))
        if domain == "in":
            background = _pick(rng, tuple(render.PLAIN_BACKGROUNDS))
        else:
            background = _pick(rng, render.TEXTURED_BACKGROUNDS)
        jitter = int(rng.integers(-10, 11))
        forced = int(rng.integers(n))  # the event that shows a held-out pair (shift only)
        held = tuple(sorted(HELD_OUT_PAIRS))
        pool = SEEN_PAIRS if domain == "in" else ALL_PAIRS
        events: list[Event] = []
        for k in range(n):
            used = {e.pair for e in events}
            options = held if (domain == "shift" and k == forced) else pool
            colour, shape = _pick(rng, tuple(p for p in options if p not in used))
            size = _pick(rng, SIZES)
            motion = _pick(rng, _motions_for(shape))
            ux, uy = (float(x) for x in rng.random(2))
            events.append(Event(colour, shape, size, motion, ux, uy, wording=k))
        return background, jitter, tuple(events)

    def scene(self, split: str, index: int) -> Scene:
        """The scene of video ``index`` of ``split``: a function of (seed, split, index)."""
        n = self.num_videos(split)
        if not 0 <= int(index) < n:
            raise AnnotationError(f"{self.name}: index {index} is outside split {split!r} "
                                  f"({n} videos with these options)",
                                  hint=f"use an index in [0, {n - 1}] or raise num_{split}")
        domain = self.domain(split)
        group, member = divmod(int(index), self.group_size)
        background, jitter, events = self._base(split, group)
        change = "base"
        if member > 0:
            order = _rng(*self._key(split), group, _PURPOSE_KINDS).permutation(
                len(HARD_NEGATIVE_KINDS))
            kinds = [HARD_NEGATIVE_KINDS[int(i)] for i in order]
            kinds = [k for k in kinds if _neighbours(events, k, domain)]
            if member - 1 < len(kinds):
                change = kinds[member - 1]
                options = _neighbours(events, change, domain)
                events = _pick(_rng(*self._key(split), group, _PURPOSE_MEMBER, member), options)
            else:  # fewer valid kinds than members (e.g. one event in the shift domain):
                # an unrelated scene rather than a repeated kind that could duplicate one
                background, jitter, events = self._base(split, group, variant=member)
                change = "independent"
        return Scene(video_id=self.video_id(split, index), split=split, index=int(index),
                     domain=domain, group=group, member=member, change=change,
                     background=background, jitter=jitter, events=events)

    def captions(self, scene: Scene) -> tuple[str, ...]:
        """``captions_per_video`` distinct captions of ``scene``, seeded per group and
        caption slot (so a group's members are described with the same wording)."""
        out: list[str] = []
        for slot in range(self.captions_per_video):
            text = None
            for attempt in range(64):
                rng = _rng(*self._key(scene.split), scene.group, _PURPOSE_CAPTION, slot, attempt)
                cand = _compose(scene.events, rng)
                if caption_length(cand) <= MAX_CAPTION_TOKENS and cand not in out:
                    text = cand
                    break
            out.append(text if text is not None else _canonical(scene.events))
        return tuple(out)

    def render(self, scene: Scene) -> np.ndarray:
        """Frames [T, S, S, 3] uint8 of ``scene``."""
        rng = _rng(*self._key(scene.split), scene.group, _PURPOSE_TEXTURE)  # "noise" only
        bg = render.background(scene.background, self.frame_size, jitter=scene.jitter, rng=rng)
        style = render.NORMAL if scene.domain == "in" else render.SLOW
        return render.render([(e.colour, e.shape, e.size, e.motion, e.ux, e.uy)
                               for e in scene.events],
                              bg=bg, frames_per_event=self.seconds_per_event, style=style)

    # ------------------------------------------------------------------ plugin methods
    def load_split(self, source: Path | None, split: str) -> SplitAnnotations:
        """All videos of ``split`` with their captions; ``source`` is ignored."""
        videos = []
        for i in range(self.num_videos(split)):
            sc = self.scene(split, i)
            videos.append(VideoEntry(video_id=sc.video_id, captions=self.captions(sc)))
        return SplitAnnotations(dataset=self.name, split=split, protocol=self.protocol,
                                videos=videos)

    def generate(self, entry: VideoEntry) -> np.ndarray:
        """Frames of ``entry`` (any entry this dataset's ``load_split`` returned)."""
        split, index = self.parse_video_id(entry.video_id)
        return self.render(self.scene(split, index))


class SyntheticShift(Synthetic):
    """``synthetic`` with a distribution shift in val and test.

    Train is identical to ``synthetic`` train (same seed, same content; ids differ only
    in their prefix). Val/test: every video shows at least one of :data:`HELD_OUT_PAIRS`
    (colour-shape pairs never seen in training), on textured backgrounds, moving at the
    slower :data:`~diffret_plugins.datasets.render.SLOW` speeds.
    """

    name: ClassVar[str] = "synthetic-shift"
    id_prefix: ClassVar[str] = "synshift"

    def domain(self, split: str) -> str:
        return "in" if split == "train" else "shift"
