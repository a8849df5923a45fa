"""Streaming overlap-add inference with the arithmetic of ``demucs.apply.apply_model``.

``apply_model`` holds the whole track, and an output of four times its size, in memory. Here
the same segment grid, triangular transition weights, random ``shifts`` and bag-of-models
weighting are computed as a stream: input is pulled block by block, and output is released as
soon as no later segment can still add to it, so memory does not depend on track length.

Every (model of the bag, shift) pair is one *pass*: a grid of segments over the input delayed
by that shift. A pass's output is final up to the start of its next segment; the passes advance
together in input order, and what all of them have finished is weighted, summed and emitted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

from stemify.engine.backends.base import TORCH, Backend
from stemify.engine.params import check_bounds, default_of
from stemify.engine.progress import CancelToken
from stemify.errors import CanceledError, InvalidOptionError

Audio = npt.NDArray[np.float32]


class RandInt(Protocol):
    def randint(self, a: int, b: int) -> int: ...


@dataclass(frozen=True)
class InferenceOptions:
    shifts: int = default_of("shifts")
    overlap: float = default_of("overlap")
    segment: float | None = None  # seconds; None = the model's own
    batch_size: int = 1  # segments stacked into one forward pass
    device: str = "cpu"
    transition_power: float = 1.0

    def validate(self, model: Any) -> None:
        check_bounds("shifts", self.shifts)
        check_bounds("overlap", self.overlap)
        if not 1 <= self.batch_size <= 64:
            raise InvalidOptionError(f"batch_size must be between 1 and 64, got {self.batch_size}")
        if self.transition_power < 1.0:
            raise InvalidOptionError("transition_power must be at least 1")
        if self.segment is not None:
            if self.segment <= 0:
                raise InvalidOptionError(f"segment must be positive, got {self.segment}")
            limit = _max_allowed_segment(model)
            if self.segment > limit:
                raise InvalidOptionError(
                    f"segment {self.segment:g} s is longer than this model allows "
                    f"({float(limit):g} s for a transformer model)"
                )


def _sub_models(model: Any) -> list[tuple[Any, list[float]]]:
    if isinstance(model, BagOfModels):
        return list(zip(model.models, model.weights, strict=True))
    return [(model, [1.0] * len(model.sources))]


def _max_allowed_segment(model: Any) -> float:
    limit = float("inf")
    for sub, _ in _sub_models(model):
        if isinstance(sub, HTDemucs):
            limit = min(limit, float(sub.segment))
    return limit


def _valid_length(model: Any, user_segment: float | None, chunk_length: int) -> int:
    # Mirrors apply_model's unsplit branch, which sees the caller's segment, not the model's.
    if isinstance(model, HTDemucs) and user_segment is not None:
        return int(user_segment * model.samplerate)
    if hasattr(model, "valid_length"):
        return int(model.valid_length(chunk_length))
    return chunk_length


class _Reader:
    """A sliding window over the input stream; reads outside ``[0, length)`` are zeros."""

    def __init__(self, blocks: Iterator[Audio], channels: int, length: int) -> None:
        self._blocks = blocks
        self._channels = channels
        self._length = length
        self._buffer: Audio = np.zeros((channels, 0), dtype=np.float32)
        self._start = 0

    def _fill(self, until: int) -> None:
        end = self._start + self._buffer.shape[1]
        parts = [self._buffer]
        while end < until:
            block = next(self._blocks, None)
            if block is None:  # shorter than announced: the rest is silence
                block = np.zeros((self._channels, until - end), dtype=np.float32)
            block = block[:, : self._length - end]
            parts.append(block)
            end += block.shape[1]
        if len(parts) > 1:
            self._buffer = np.concatenate(parts, axis=1)

    def read(self, start: int, stop: int) -> Audio:
        out = np.zeros((self._channels, stop - start), dtype=np.float32)
        low, high = max(start, 0), min(stop, self._length)
        if high > low:
            if low < self._start:
                raise AssertionError("read before the discarded part of the stream")
            self._fill(high)
            out[:, low - start : high - start] = self._buffer[
                :, low - self._start : high - self._start
            ]
        return out

    def discard_before(self, position: int) -> None:
        cut = min(position - self._start, self._buffer.shape[1])
        if cut > 0:
            self._buffer = np.ascontiguousarray(self._buffer[:, cut:])
            self._start += cut


@dataclass
class _Segment:
    offset: int  # in the pass's delayed coordinates
    length: int  # output samples kept
    valid: int  # input samples fed to the model


class _Pass:
    """One model at one shift: its segment grid and overlap-add accumulator."""

    def __init__(
        self,
        model: Any,
        coefficients: torch.Tensor,
        delay: int,
        length: int,
        options: InferenceOptions,
    ) -> None:
        self.model = model
        self.coefficients = coefficients[:, None, None]
        self.delay = delay  # the input is seen ``delay`` samples late: x[i] is at i + delay
        self.length = length
        segment = options.segment if options.segment is not None else model.segment
        self.segment_length = int(model.samplerate * segment)
        stride = int((1 - options.overlap) * self.segment_length)
        self.offsets = range(0, length + delay, stride)
        self.index = 0
        self.user_segment = options.segment
        half = self.segment_length // 2
        weight = torch.cat(
            [
                torch.arange(1, half + 1),
                torch.arange(self.segment_length - half, 0, -1),
            ]
        ).float()
        self.weight = (weight / weight.max()) ** options.transition_power
        sources, channels = len(model.sources), model.audio_channels
        self.sum = torch.zeros(sources, channels, 0)
        self.sum_weight = torch.zeros(0)
        self.sum_start = 0  # delayed coordinate of sum[..., 0]

    @property
    def done(self) -> bool:
        return self.index >= len(self.offsets)

    @property
    def final_until(self) -> int:
        """Input position up to which this pass's output can no longer change."""
        if self.done:
            return self.length
        return self.offsets[self.index] - self.delay

    def _segment(self, index: int) -> _Segment:
        offset = self.offsets[index]
        length = min(self.length + self.delay - offset, self.segment_length)
        return _Segment(offset, length, _valid_length(self.model, self.user_segment, length))

    def next_batch(self, size: int) -> list[_Segment]:
        first = self._segment(self.index)
        batch = [first]
        while len(batch) < size and self.index + len(batch) < len(self.offsets):
            candidate = self._segment(self.index + len(batch))
            if (candidate.length, candidate.valid) != (first.length, first.valid):
                break
            batch.append(candidate)
        return batch

    def input_start(self, segment: _Segment) -> int:
        """Where, in input coordinates, the model's view of ``segment`` starts."""
        return segment.offset - (segment.valid - segment.length) // 2 - self.delay

    def accumulate(self, segment: _Segment, estimate: torch.Tensor) -> None:
        end = segment.offset + segment.length
        grow = end - (self.sum_start + self.sum.shape[-1])
        if grow > 0:
            self.sum = torch.cat([self.sum, self.sum.new_zeros(*self.sum.shape[:-1], grow)], -1)
            self.sum_weight = torch.cat([self.sum_weight, self.sum_weight.new_zeros(grow)])
        weight = self.weight[: segment.length]
        low, high = segment.offset - self.sum_start, end - self.sum_start
        self.sum[..., low:high] += weight * estimate
        self.sum_weight[low:high] += weight
        self.index += 1

    def take(self, start: int, stop: int) -> torch.Tensor:
        """The weighted, finished output for input range [start, stop); forgets what precedes."""
        low = start + self.delay - self.sum_start
        high = stop + self.delay - self.sum_start
        out = self.sum[..., low:high] / self.sum_weight[low:high]
        self.sum = self.sum[..., high:].clone()
        self.sum_weight = self.sum_weight[high:].clone()
        self.sum_start += high
        return self.coefficients * out


def _center_trim(tensor: torch.Tensor, length: int) -> torch.Tensor:
    delta = tensor.shape[-1] - length
    return tensor[..., delta // 2 : delta // 2 + length]


def _build_passes(model: Any, length: int, options: InferenceOptions, rng: RandInt) -> list[_Pass]:
    passes = []
    members = _sub_models(model)
    totals = torch.tensor([sum(w[k] for _, w in members) for k in range(len(model.sources))])
    repeats = max(options.shifts, 1)
    for sub, weights in members:
        coefficients = torch.tensor(weights, dtype=torch.float32) / totals / repeats
        max_shift = int(0.5 * sub.samplerate)
        for _ in range(options.shifts):
            # Drawn in apply_model's order (per model, then per shift) so a seeded run matches.
            delay = max_shift - rng.randint(0, max_shift)
            passes.append(_Pass(sub, coefficients, delay, length, options))
        if options.shifts == 0:
            passes.append(_Pass(sub, coefficients, 0, length, options))
    return passes


def stream_separate(
    model: Any,
    blocks: Iterator[Audio],
    length: int,
    options: InferenceOptions,
    *,
    on_segments: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
    rng: RandInt | None = None,
    backend: Backend = TORCH,
) -> Iterator[tuple[Audio, Audio]]:
    """Separate a stream of ``(channels, n)`` float32 blocks totalling ``length`` samples.

    Yields ``(mix, sources)`` pairs in order: the input block and the estimate for it, shaped
    ``(channels, n)`` and ``(sources, channels, n)``. ``on_segments(done, total)`` is called
    after each forward pass with the segments computed so far and planned in all. ``rng``
    draws the shifts; by default the global ``random`` module, as ``apply_model`` does.
    ``backend`` runs each batch of segments through a sub-model (torch: demucs' forward).
    """
    options.validate(model)
    device = torch.device(options.device)
    passes = _build_passes(model, length, options, rng if rng is not None else random)
    for sub, _ in _sub_models(model):
        sub.to(device).eval()
    total = sum(len(p.offsets) for p in passes)
    done = 0
    longest = max(p.segment_length for p in passes) * 2
    reader = _Reader(blocks, model.audio_channels, length)
    emitted = 0
    while emitted < length:
        pending = [p for p in passes if not p.done]
        if pending:
            current = min(pending, key=lambda p: p.final_until)
            batch = current.next_batch(options.batch_size)
            if cancel is not None and cancel.canceled:
                raise CanceledError()
            inputs = [
                torch.from_numpy(reader.read(start, start + s.valid))
                for s in batch
                for start in [current.input_start(s)]
            ]
            with torch.inference_mode():
                stacked = torch.stack(inputs).to(device)
                estimates = backend.forward(current.model, stacked).to("cpu")
            for segment, estimate in zip(batch, estimates, strict=True):
                current.accumulate(segment, _center_trim(estimate, segment.length))
            done += len(batch)
            if on_segments is not None:
                on_segments(done, total)
        frontier = min(p.final_until for p in passes)
        if frontier > emitted:
            out = passes[0].take(emitted, frontier)
            for other in passes[1:]:
                out += other.take(emitted, frontier)
            yield reader.read(emitted, frontier), out.numpy().astype(np.float32, copy=False)
            emitted = frontier
        reader.discard_before(min(emitted, min(p.final_until for p in passes) - longest))
