"""Tuning constants: every number the package picked for speed or memory, in one place.

Each comes with how it was measured (or, where it was not, what it bounds). The code
imports them from here and reads them at call time where a test needs to change them
(``monkeypatch.setattr(conversenet._tuning, NAME, value)``). Machine notes: "Xeon" is the
2-core Intel Xeon VM of docs/PERFORMANCE.md, "EPYC" the AMD EPYC of its "AMD EPYC"
section, "H200"/"H100" the GPUs of docs/REPRODUCTION.md.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------
# the solve (conversenet.functional.converse)
# --------------------------------------------------------------------------------------
#: No-grad solves run in channel groups of about this many output elements (CPU), so that
#: the padded input, its spectrum and the FFT work space exist for one group at a time and
#: stay in cache. Measured on the Xeon (bench row "fwd", 1x128x256x256): peak memory 0.11 of
#: the baseline, and faster than one call on all channels (docs/PERFORMANCE.md).
SOLVE_CHUNK_ELEMS = 1 << 20
#: The same on GPUs: in effect one group. Many CPU-sized groups were launch-bound on the
#: H100 (the 512x512 Converse-DnCNN: 302 ms in groups, 100.5 ms in one; docs/PERFORMANCE.md).
SOLVE_CHUNK_ELEMS_GPU = 1 << 28
#: Kernels with at most this many taps are transformed by two small DFT-matrix products
#: (O(M N k)) instead of an FFT of the zero-padded kernel; not timed at this bound: it
#: covers every kernel of the paper (<= 7x7 layers, <= 15x15 blur kernels) with margin.
DFT_MAX_TAPS = 256

# --------------------------------------------------------------------------------------
# the real FFTs on CPUs (conversenet.functional._fft and _fft_policy)
# --------------------------------------------------------------------------------------
#: "axes"/"split" without autograd transform planes in groups of about this many complex
#: elements: on the Xeon (2 threads, 128 planes of 524x524) 4-16 planes at a time were
#: 1.5-2.3x faster than MKL's rfft2; 128 at once was slower.
FFT_GROUP_ELEMS = 1 << 20
#: Split window of the Cooley-Tukey path: N = N1 * p with p the largest prime factor,
#: 2 <= N1 <= FFT_SPLIT_MAX_N1 and p >= FFT_SPLIT_MIN_PRIME. On the Xeon MKL 2024.2 ran
#: N = 4 * 131 = 524 2.7x slower than the split (6.6 ms vs 2.4 ms for 4 planes of
#: 524x263); for p < 11 MKL's own radix steps are fast. Whether the split runs is measured.
FFT_SPLIT_MAX_N1 = 8
FFT_SPLIT_MIN_PRIME = 11
#: Transforms smaller than this (elements per call) take torch.fft without measuring:
#: every implementation takes microseconds there, less than measuring would cost (not
#: timed separately; 8192 elements is one 90x90 plane).
FFT_MIN_MEASURED = 1 << 13
#: Seconds spent timing the candidates of one decision (a soft cap, checked after each
#: round), and the rounds: at least FFT_MIN_REPS, at most FFT_MAX_REPS (best of 3-7 calls,
#: interleaved so that a noisy neighbour slows all alike). A cost bound chosen, not tuned:
#: the decisions of docs/PERFORMANCE.md runs E1-E4 were made with these values.
FFT_BUDGET_S = 0.5
FFT_MIN_REPS = 3
FFT_MAX_REPS = 7
#: Tensors timed for a decision hold at most this many elements (the batch is capped): a
#: bound on the memory of measuring (32 MiB of complex64), not a timing result.
FFT_MEASURE_ELEMS = 1 << 22
#: Pixels of the products timed for the block's 1x1 memory-order decision (the image's
#: pixel count rounded up to a power of two, at most this): a bound on the memory and time
#: of measuring (64 x 2^18 floats = 64 MiB), not a timing result.
LAYOUT_MEASURE_PIXELS = 1 << 18
#: Decisions kept per process (least recently made first out; a forgotten one is measured
#: again). A bound on memory, not a timing: keys are (direction, size, batch bucket, dtype,
#: threads, autograd), so one network at one image size makes a few dozen.
FFT_MAX_DECISIONS = 1024

# --------------------------------------------------------------------------------------
# layers (conversenet.nn.converse)
# --------------------------------------------------------------------------------------
#: Default ``Converse2d.filter_cache_bytes``: eval-mode spectral filters up to this size are
#: kept. 64 MiB before issue 18; 16 MiB since: on the EPYC rebuilding the larger filters per
#: group cost under 1 % of Converse-DnCNN at 256x256 and saved 20 x 37 MB.
FILTER_CACHE_BYTES = 16 * 2**20
#: Temporaries of the fused no-grad ConverseBlock path at least this large (elements) come
#: from the per-thread workspace: on the Xeon a fresh 100+ MB tensor cost page faults about as
#: much as the matrix product filling it (torch.mm 64->128 channels at 512x512: 61 ms into a
#: new tensor, 25 ms into a reused one); smaller ones gain nothing measurable.
WORKSPACE_MIN_ELEMS = 1 << 18

#: fresh CPU tensors of at least this many bytes that the package keeps or returns from its
#: fused training pieces are advised to the kernel as transparent huge pages before first use
#: (conversenet.functional._workspace.fresh): two huge pages' worth, so that at least one
#: whole 2 MB page lies inside the tensor
HUGEPAGE_MIN_BYTES = 4 << 20

# --------------------------------------------------------------------------------------
# caches (conversenet._caches)
# --------------------------------------------------------------------------------------
#: Entries of each DFT / phase / index table cache (functools.lru_cache): one entry per
#: (size, device, dtype); a bound on memory (a few MB at most per cache), not a timing.
TABLE_CACHE_SIZE = 64
#: Models kept loaded by ``conversenet.restore(...)`` (one per task/model/weights/device):
#: a bound on memory (the official weight files are 1-3.3 MB each), not a timing.
RESTORE_MODEL_CACHE_SIZE = 4

# --------------------------------------------------------------------------------------
# memory estimate for tiled inference (conversenet.restore)
# --------------------------------------------------------------------------------------
#: Live activations of the widest layer at once during a forward pass: measured 7.4 for
#: Converse-DnCNN and about 9 for Converse-SRResNet (peak RSS / widest activation on the
#: Xeon; docs/RESTORE.md), rounded up.
TILE_ACTIVATIONS = 10.0
#: Safety factor on the whole estimate (allocator slack, FFT work space): a margin chosen,
#: not measured separately.
TILE_SAFETY = 1.2
