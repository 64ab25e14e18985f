"""The compressed-model file (Deep Compression, stage 3) and the Huffman coder it uses.

A file is `CNNZ` + version, a little-endian uint32 header length, a zlib-compressed JSON
header, and a binary payload the header points into. Pruned kernels are stored sparsely as Han et al. do: for each
kept weight, the number of zeros before it in the flattened kernel (a fixed `index_bits`
width; a gap that does not fit is bridged with filler entries whose value is zero) and its
value. Values are float32 (`sparse`), or indices into the layer's float32 centroids, at
`bits` per index (`shared`) or Huffman-coded together with the gaps (`huffman`). Everything
else (biases, normalization, batch statistics, unpruned kernels) is raw float32, so decoding
rebuilds the quantized network bit for bit. Sizes reported anywhere are this file's bytes.
"""

from __future__ import annotations

import heapq
import json
import os
import struct
import zlib
from typing import Any

import numpy as np

from errors import UserError

MAGIC = b'CNNZ\x02'
ENCODINGS = ('raw', 'sparse', 'shared', 'huffman')


# ----------------------------------------------------------------------------- Huffman


def code_lengths(counts: np.ndarray) -> np.ndarray:
  """Huffman code length of each symbol from its count (0 for unused symbols; a lone used
  symbol gets length 1). Ties are broken by symbol order, so the lengths are deterministic."""
  counts = np.asarray(counts, np.int64)
  used = np.flatnonzero(counts)
  lengths = np.zeros(len(counts), np.int64)
  if len(used) == 1:
    lengths[used] = 1
    return lengths
  # Heap of (count, tie-break, symbols under the node); merging adds one bit to each.
  heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
  heapq.heapify(heap)
  order = len(heap)
  while len(heap) > 1:
    c1, _, s1 = heapq.heappop(heap)
    c2, _, s2 = heapq.heappop(heap)
    lengths[s1] += 1
    lengths[s2] += 1
    heapq.heappush(heap, (c1 + c2, order, s1 + s2))
    order += 1
  return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
  """Canonical Huffman codes (uint64) for the given lengths: symbols sorted by (length, symbol)
  get consecutive codes, so the lengths alone define the code and are all the file stores."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.max(initial=0) > 63:
    raise ValueError('Huffman code longer than 63 bits')
  codes = np.zeros(len(lengths), np.uint64)
  code, prev = 0, 0
  for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
    code <<= int(lengths[s]) - prev
    prev = int(lengths[s])
    codes[s] = code
    code += 1
  return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
  """The bit string of `symbols` under the canonical code of `lengths`, zero-padded to bytes."""
  symbols = np.asarray(symbols, np.int64)
  if symbols.size == 0:
    return b''
  codes, lens = canonical_codes(lengths)[symbols], np.asarray(lengths, np.int64)[symbols]
  width = int(lens.max())
  shifts = (lens[:, None] - 1 - np.arange(width)[None, :])
  bits = (codes[:, None] >> np.maximum(shifts, 0).astype(np.uint64)) & np.uint64(1)
  return np.packbits(bits.astype(np.uint8)[shifts >= 0]).tobytes()


def huffman_decode(data: bytes, lengths: np.ndarray, n: int) -> np.ndarray:
  """The first `n` symbols of `data` (canonical code of `lengths`)."""
  lengths = np.asarray(lengths, np.int64)
  order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
  max_len = int(lengths.max(initial=0))
  # Canonical decoding: per length, the first code, how many codes, where they start in order.
  first, count, start = [0] * (max_len + 2), [0] * (max_len + 2), [0] * (max_len + 2)
  for s in order:
    count[lengths[s]] += 1
  code = idx = 0
  for length in range(1, max_len + 1):
    code <<= 1
    first[length], start[length] = code, idx
    code += count[length]
    idx += count[length]
  bits = np.unpackbits(np.frombuffer(data, np.uint8)).tolist()
  out = np.empty(n, np.int64)
  pos = 0
  for i in range(n):
    code = length = 0
    while True:
      code = (code << 1) | bits[pos]
      pos += 1
      length += 1
      offset = code - first[length]
      if offset < count[length]:
        out[i] = order[start[length] + offset]
        break
      if length >= max_len:
        raise ValueError('corrupt Huffman stream')
  return out


# ----------------------------------------------------------------------------- sparse layout


def relative_indices(mask: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(gaps, positions) of the kept weights of a flattened mask as stored: `gaps[i]` zeros
  precede entry i; a run of zeros longer than 2^index_bits - 1 is bridged by filler entries
  (gap = the maximum, position = a pruned weight, stored value zero). Positions index the
  flattened kernel; fillers are the entries whose position is pruned in `mask`."""
  cap = 2 ** index_bits - 1
  kept = np.flatnonzero(mask.ravel())
  gaps, positions, prev = [], [], -1
  for p in kept:  # vectorizing this is not worth it: it runs once per layer per file
    gap = p - prev - 1
    while gap > cap:
      prev += cap + 1
      gaps.append(cap)
      positions.append(prev)
      gap -= cap + 1
    gaps.append(gap)
    positions.append(p)
    prev = p
  return np.asarray(gaps, np.int64), np.asarray(positions, np.int64)


def positions_from_gaps(gaps: np.ndarray) -> np.ndarray:
  return np.cumsum(np.asarray(gaps, np.int64) + 1) - 1


def pack_fixed(values: np.ndarray, bits: int) -> bytes:
  """Unsigned integers at a fixed bit width, MSB first."""
  v = np.asarray(values, np.uint64)
  if v.size == 0:
    return b''
  shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
  return np.packbits(((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).ravel()).tobytes()


def unpack_fixed(data: bytes, bits: int, n: int) -> np.ndarray:
  b = np.unpackbits(np.frombuffer(data, np.uint8))[:n * bits].reshape(n, bits).astype(np.uint64)
  return (b << np.arange(bits - 1, -1, -1, dtype=np.uint64)).sum(axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- the file


def _lengths_bytes(lengths: np.ndarray) -> bytes:
  """A code-length table as one byte per symbol, trailing unused symbols dropped."""
  used = np.flatnonzero(lengths)
  return np.asarray(lengths[:used[-1] + 1], np.uint8).tobytes()


class _Payload:
  def __init__(self):
    self.parts, self.size = [], 0

  def add(self, data: bytes) -> list[int]:
    self.parts.append(data)
    self.size += len(data)
    return [self.size - len(data), len(data)]


def write(path: str, arrays: dict[str, np.ndarray], encoding: str = 'raw',
          masks: dict[str, np.ndarray] | None = None, index_bits: dict[str, int] | None = None,
          centroids: dict[str, np.ndarray] | None = None,
          assignments: dict[str, np.ndarray] | None = None,
          bits: dict[str, int] | None = None, meta: dict | None = None) -> int:
  """Writes `arrays` ({name: float32 array}: params and batch statistics, flattened names) to
  `path`; kernels named in `masks` (sparse/shared/huffman) or in `assignments` (shared/huffman)
  are compressed. Returns the file's size in bytes."""
  if encoding not in ENCODINGS:
    raise ValueError(encoding)
  payload = _Payload()
  entries = []
  for name, a in arrays.items():
    a = np.asarray(a, np.float32)
    e = {'name': name, 'shape': list(a.shape)}
    if encoding == 'raw' or not masks or name not in masks:
      e.update(kind='raw', data=payload.add(a.tobytes()))
      entries.append(e)
      continue
    ib = index_bits[name]
    gaps, pos = relative_indices(masks[name], ib)
    e.update(index_bits=ib, entries=len(gaps))
    if encoding == 'sparse':
      e.update(kind='sparse', gaps=payload.add(pack_fixed(gaps, ib)),
               values=payload.add(a.ravel()[pos].astype(np.float32).tobytes()))
    else:
      c, assign = centroids[name], assignments[name].ravel()
      zero = len(c)  # the filler symbol: a stored zero
      symbols = np.where(assign[pos] >= 0, assign[pos], zero)
      e['centroids'] = payload.add(np.asarray(c, np.float32).tobytes())
      e['num_centroids'] = len(c)
      if encoding == 'shared':
        width = max(1, int(np.ceil(np.log2(zero + 1))))
        e.update(kind='shared', bits=width, gaps=payload.add(pack_fixed(gaps, ib)),
                 values=payload.add(pack_fixed(symbols, width)))
      else:
        gl = code_lengths(np.bincount(gaps, minlength=2 ** ib))
        vl = code_lengths(np.bincount(symbols, minlength=zero + 1))
        e.update(kind='huffman', gap_lengths=payload.add(_lengths_bytes(gl)),
                 value_lengths=payload.add(_lengths_bytes(vl)),
                 gaps=payload.add(huffman_encode(gaps, gl)),
                 values=payload.add(huffman_encode(symbols, vl)))
    entries.append(e)
  header = zlib.compress(json.dumps({'arrays': entries, 'meta': meta or {}},
                                    separators=(',', ':')).encode(), 9)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(MAGIC + struct.pack('<I', len(header)) + header)
    for part in payload.parts:
      f.write(part)
  os.replace(tmp, path)
  return os.path.getsize(path)


def read(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """({name: float32 array}, meta) of a file written by `write`."""
  try:
    with open(path, 'rb') as f:
      blob = f.read()
  except OSError as e:
    raise UserError(f'cannot read the compressed model {path} ({e.strerror})') from None
  if not blob.startswith(MAGIC):
    raise UserError(f'{path} is not a compressed model file (written by --mode=compress)')
  (n,) = struct.unpack('<I', blob[len(MAGIC):len(MAGIC) + 4])
  start = len(MAGIC) + 4
  header = json.loads(zlib.decompress(blob[start:start + n]))
  body = blob[start + n:]
  part = lambda ref: body[ref[0]:ref[0] + ref[1]]
  out: dict[str, Any] = {}
  for e in header['arrays']:
    shape = tuple(e['shape'])
    if e['kind'] == 'raw':
      out[e['name']] = np.frombuffer(part(e['data']), np.float32).reshape(shape).copy()
      continue
    ib, m = e['index_bits'], e['entries']
    if e['kind'] == 'huffman':
      gaps = huffman_decode(part(e['gaps']), np.frombuffer(part(e['gap_lengths']), np.uint8), m)
    else:
      gaps = unpack_fixed(part(e['gaps']), ib, m)
    pos = positions_from_gaps(gaps)
    if e['kind'] == 'sparse':
      values = np.frombuffer(part(e['values']), np.float32)
    else:
      c = np.frombuffer(part(e['centroids']), np.float32)
      if e['kind'] == 'shared':
        symbols = unpack_fixed(part(e['values']), e['bits'], m)
      else:
        symbols = huffman_decode(part(e['values']),
                                 np.frombuffer(part(e['value_lengths']), np.uint8), m)
      values = np.append(c, np.float32(0))[symbols]
    flat = np.zeros(int(np.prod(shape)), np.float32)
    flat[pos] = values
    out[e['name']] = flat.reshape(shape)
  return out, header['meta']
