"""Training batches streamed from tar shards: each rank and each loader worker reads its own shards,
and a run stopped anywhere resumes at the shard and the sample where it stopped.

The plan (`StreamPlan`, fixed for the run): shard i goes to rank i % world, and a rank's k-th shard
to its lane k % lanes (lanes: the fewest shards any rank has, at most `MAX_LANES`). Each epoch:

- each lane reads its shards in an order shuffled by (seed, epoch, rank, lane), each shard through a
  shuffle buffer seeded by (seed, epoch, shard), and cuts what it reads into micro-batches (a last
  remainder of one image joins the batch before it: BatchNorm cannot train on one image);
- the rank's batches are the lanes' in turn (round robin over the lanes that still have batches);
- every rank trains the same number of batches, the fewest any rank has, so DistributedDataParallel
  steps stay in step. The images over that are left out of the epoch: at most about one shard per
  rank (`StreamPlan.left_out` counts them; describe() says so), and which ones changes every epoch
  with the shard order. Every other image is seen exactly once per epoch, by one rank.

Loader worker w reads lanes w, w + workers, ... and the main process puts the batches back in the
lanes' turn order (`StreamBatches`), so the batches and their augmentations (seeded per sample by
(seed, epoch, shard, position)) do not depend on the number of workers. Resuming: the trainer's
position (micro-batches done) fixes each lane's batches done, hence the shard and the sample within it
where the lane goes on; earlier shards are not opened, and the current one is read, without
decoding, up to that sample.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from visionzoo.data.datasets import ImageDataset, collate_skipping
from visionzoo.data.samples import EncodedSamples
from visionzoo.data.shards import Record, ShardSamples, read_records
from visionzoo.errors import DataError

__all__ = ["StreamPlan", "ShardStream", "StreamBatches", "MAX_LANES", "SHUFFLE_BUFFER"]

MAX_LANES = 8
SHUFFLE_BUFFER = 256  # samples held per lane: bytes of encoded images, not decoded ones


class StreamPlan:
    """Which shards each rank's lanes read, and how many micro-batches of `batch_size` an epoch has."""

    def __init__(self, samples: ShardSamples, *, rank: int, world: int, batch_size: int, seed: int):
        shards = len(samples.urls)
        if shards < world:
            raise DataError(f"{shards} training shards cannot feed {world} processes (each reads its own): "
                            f"pack with a smaller --shard-size to make at least {world}")
        self.samples, self.rank, self.world, self.batch_size, self.seed = samples, rank, world, batch_size, seed
        self.lanes = max(1, min(MAX_LANES, shards // world))
        # every rank's lanes: lists of shard numbers
        self.layout = [[list(range(r, shards, world))[lane::self.lanes] for lane in range(self.lanes)]
                       for r in range(world)]
        per_rank = [[self.lane_batches(sum(samples.counts[s] for s in lane)) for lane in lanes]
                    for lanes in self.layout]
        self.batches = min(sum(lanes) for lanes in per_rank)
        self.lane_counts = per_rank[rank]
        kept = sum(sum(self.lane_samples(r, lane, self._order(per_rank[r])) for lane in range(self.lanes))
                   for r in range(world))
        self.left_out = len(samples) - kept

    def lane_batches(self, count: int) -> int:
        """Micro-batches of a lane of `count` samples (a last one-image remainder joins the batch before)."""
        full, rest = divmod(count, self.batch_size)
        return full if rest == 1 and full else full + (rest > 0)

    def _order(self, lane_counts: list[int]) -> np.ndarray:
        rounds = max(lane_counts, default=0)
        order = [lane for turn in range(rounds) for lane, count in enumerate(lane_counts) if count > turn]
        return np.array(order[:self.batches], dtype=np.int64)

    def order(self) -> np.ndarray:
        """The lane of each of this rank's micro-batches in an epoch, in training order."""
        return self._order(self.lane_counts)

    def lane_samples(self, rank: int, lane: int, order: np.ndarray) -> int:
        """Images the lane trains on in an epoch of `order`."""
        total = sum(self.samples.counts[s] for s in self.layout[rank][lane])
        taken = int((order == lane).sum())
        return total if taken == self.lane_batches(total) else taken * self.batch_size

    def shard_order(self, epoch: int, lane: int) -> list[int]:
        shards = self.layout[self.rank][lane]
        permutation = np.random.default_rng([self.seed, epoch, self.rank, lane]).permutation(len(shards))
        return [shards[i] for i in permutation]


def _shuffled(records: Iterator, rng: np.random.Generator, size: int) -> Iterator:
    """A shuffle buffer of `size` records: deterministic for a given stream and generator."""
    buffer: list = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = record
    for slot in rng.permutation(len(buffer)).tolist():
        yield buffer[slot]


def _sample_seed(seed: int, epoch: int, shard: int, position: int) -> int:
    state = np.random.SeedSequence([seed, epoch, shard, position]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class ShardStream(IterableDataset):
    """The micro-batches of one rank's epoch as `(lane, batch number, collated batch)`; in a loader
    worker, only its own lanes'. `set_epoch(epoch, start)` chooses the epoch and the first batch."""

    def __init__(self, samples: ShardSamples, plan: StreamPlan, transform: Callable | None):
        self.samples, self.plan, self.transform = samples, plan, transform
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def _lane(self, lane: int, first: int, last: int) -> Iterator[tuple[int, int, list, list[int], list[int]]]:
        """Batches `first` to `last` (exclusive) of a lane: (lane, number, records, seeds, sample ids)."""
        plan, size = self.plan, self.plan.batch_size
        total = sum(self.samples.counts[s] for s in plan.layout[plan.rank][lane])
        skip, end = first * size, total if last == plan.lane_batches(total) else last * size
        records: list[Record] = []
        seeds: list[int] = []
        ids: list[int] = []
        number, taken = first, first * size
        merges = end == total and total % size == 1 and total > size  # the last image joins the batch before
        for shard in plan.shard_order(self.epoch, lane):
            count = self.samples.counts[shard]
            if skip >= count:  # done before the resume: not opened
                skip -= count
                continue
            rng = np.random.default_rng([plan.seed, self.epoch, shard, 1])
            shuffled = _shuffled(enumerate(read_records(self.samples, shard)), rng, SHUFFLE_BUFFER)
            for position, (number_in_shard, record) in enumerate(shuffled):
                if position < skip:
                    continue  # read, not decoded
                if taken >= end:
                    break
                records.append(record)
                seeds.append(_sample_seed(plan.seed, self.epoch, shard, number_in_shard))
                ids.append((shard << 32) | number_in_shard)  # the sample's identity: its shard and place in the tar
                taken += 1
                if (len(records) == size and not (merges and taken == end - 1)) or taken == end:
                    yield lane, number, records, seeds, ids
                    number, records, seeds, ids = number + 1, [], [], []
            skip = 0
            if taken >= end:
                break
        if number != last:
            raise DataError(f"the shards of lane {lane} held fewer samples than their index says; pack them again "
                            f"(visionzoo data pack) or remove the stale {plan.samples.urls[0]}'s index.json")

    def _collated(self, records: list[Record], seeds: list[int], ids: list[int]) -> tuple:
        dataset = ImageDataset(EncodedSamples([r.image for r in records], np.array([r.label for r in records]),
                                              [r.name for r in records]), self.transform)
        images, labels, positions, skipped = collate_skipping([dataset[(i, seed)] for i, seed in enumerate(seeds)])
        return images, labels, torch.tensor(ids, dtype=torch.long)[positions], skipped

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        order = self.plan.order()
        done, ends = np.bincount(order[:self.start], minlength=self.plan.lanes), np.bincount(order, minlength=self.plan.lanes)
        lanes = {lane: self._lane(lane, int(done[lane]), int(ends[lane]))
                 for lane in range(self.plan.lanes) if lane % workers == worker}
        for lane in order[self.start:].tolist():
            if lane in lanes:
                lane, number, records, seeds, ids = next(lanes[lane])
                yield lane, number, self._collated(records, seeds, ids)


def _as_is(item: Any) -> Any:
    return item


class StreamBatches:
    """The training loader of a streamed run: `(images, labels, sample ids, skipped)` micro-batches,
    `len` of them per epoch, in the plan's order whatever the number of workers. It is its own
    sampler for the trainer: `set_position(epoch, samples_done)` before each epoch."""

    def __init__(self, stream: ShardStream, *, workers: int, pin_memory: bool = False):
        self.stream, self.plan = stream, stream.plan
        self.workers = min(workers, self.plan.lanes)
        self.pin_memory = pin_memory
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return self.plan.batches

    def set_position(self, epoch: int, samples_done: int) -> None:
        self.epoch, self.skip = epoch, samples_done // self.plan.batch_size

    def __iter__(self) -> Iterator:
        start, self.skip = self.skip, 0
        self.stream.set_epoch(self.epoch, start)
        order = self.plan.order()
        done = np.bincount(order[:start], minlength=self.plan.lanes)
        wanted = []
        for lane in order[start:].tolist():
            wanted.append((lane, int(done[lane])))
            done[lane] += 1
        # its own generator: creating an iterator must not draw from the global RNG (a resumed run's differs)
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.workers, collate_fn=_as_is,
                            pin_memory=self.pin_memory, generator=torch.Generator())
        waiting: dict[tuple[int, int], tuple] = {}
        arriving = iter(loader)
        for key in wanted:
            while key not in waiting:
                lane, number, batch = next(arriving)
                waiting[(lane, number)] = batch
            yield waiting.pop(key)
