"""Which packets a PyAV decoding pass must decode: a demux-only pass over the packet
timestamps runs the frame selector ahead of decoding (:func:`packet_plan`), so that the
decoder can skip the non-reference frames nobody picks (``skip_frame=NONREF``), and says
how much of the stream keyframe seeking would skip (for the choice of backend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av

from diffret_cli.data.pyav_stream import open_video_stream, stream_header
from diffret_cli.data.video_frames import FrameSelector, SamplingPlan, grid_selector
from diffret_cli.errors import DecodeError


#: Codecs whose decoders honour skip_frame=NONREF and whose packets carry one picture
#: each, stamped with its presentation time: for these the frames nobody picks and no
#: other frame refers to are not decoded at all (see packet_plan).
SKIP_CODECS = frozenset({"h264", "hevc"})


@dataclass
class PacketPlan:
    """What a demux-only pass says a PyAV decoding pass will pick (:func:`packet_plan`)."""

    count: int  # video packets, one picture each
    picks: list[float]  # timestamps the selector will pick
    wanted: set[int]  # pts of the packets to decode in full: the picks and the last frame
    # Share of the packets up to the last pick (in decode order) that lie in GOPs holding
    # no pick: what seeking from keyframe to keyframe, as decord does, would not decode.
    gop_skippable: float = 0.0


def packet_plan(path: Path, plan: SamplingPlan,
                make_selector: Callable[[Callable], FrameSelector] | None = None) -> PacketPlan | None:
    """Run the selector over packet timestamps, without decoding: which frames it will pick.

    Non-reference frames (most B-frames: about half of an H.264 stream) can then be
    skipped by the decoder, except the picked ones: nothing refers to them, so every
    other picture decodes exactly as in a full pass. Picking the nearest frame from
    a subset that holds the overall nearest gives the same picks, and the decoding pass
    checks that it did. None when the stream does not allow it: another codec, a packet
    without a timestamp, two packets with one timestamp, or a demux error.
    ``make_selector`` defaults to the sampling grid of ``plan``.
    """
    make_selector = make_selector or (lambda conv: grid_selector(plan, conv))
    try:
        container, stream = open_video_stream(path)
    except DecodeError:
        return None
    try:
        if stream.codec_context.name not in SKIP_CODECS or stream.start_time is None:
            return None
        fps = stream_header(container, stream).nominal_fps
        default_dur = 1.0 / fps if fps else 0.04  # as in the decoding pass
        tb, origin = float(stream.time_base), stream.start_time
        if plan.start > 0:  # where the decoding pass starts too
            try:
                container.seek(int(plan.start / tb) + origin, stream=stream, backward=True, any_frame=False)
            except av.FFmpegError:
                container.seek(0)
        packets: list[tuple[int, float, bool]] = []  # decode order: (pts, duration in s, keyframe)
        cut = False  # stopped reading at the second keyframe past the clip end
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet at the end
            if packet.pts is None:
                return None
            if packet.is_keyframe and (packet.pts - origin) * tb > plan.end:
                if cut:
                    break
                cut = True  # frames shown before it may still follow in decode order
            packets.append((packet.pts, packet.duration * tb if packet.duration else default_dur,
                            bool(packet.is_keyframe)))
        else:
            cut = False
    except av.FFmpegError:
        return None
    finally:
        container.close()
    stamps = sorted(packets)  # display order
    if not stamps or any(a[0] == b[0] for a, b in zip(stamps, stamps[1:])):
        return None
    selector = make_selector(lambda pts: pts)
    stopped = False
    for seq, (pts, _, _) in enumerate(stamps):
        ts = (pts - origin) * tb  # the same arithmetic as the decoding pass
        selector.feed(ts, seq, pts)
        if selector.done() and ts >= plan.end:
            stopped = True
            break
    if not stopped:
        if cut:  # the selector wanted more than was read: no plan rather than a wrong one
            return None
        last_pts, last_dur, _ = stamps[-1]
        selector.finish((last_pts - origin) * tb + last_dur)
    picked = {p[2] for p in selector.picks}
    return PacketPlan(count=len(stamps), picks=[p[0] for p in selector.picks],
                      wanted=picked | {stamps[-1][0]}, gop_skippable=_gop_skippable(packets, picked))


def _gop_skippable(packets: list[tuple[int, float, bool]], picked: set[int]) -> float:
    last = max((i for i, p in enumerate(packets) if p[0] in picked), default=-1)
    if last < 0:
        return 0.0
    skippable = run = 0
    has_pick = False
    for i, (pts, _, key) in enumerate(packets[:last + 1]):
        if key and i:  # a GOP ends
            skippable += 0 if has_pick else run
            run, has_pick = 0, False
        run += 1
        has_pick = has_pick or pts in picked
    return skippable / (last + 1)  # the GOP holding the last pick is never skipped
