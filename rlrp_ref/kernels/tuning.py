"""Every tuning constant of the kernels, each with the measurement that set it.

None of them changes a result: they choose between routes that compute the
same values (the same bits, except Winograd against im2col, which differ by
rounding; see :mod:`rlrp_ref.kernels.winograd`). The kernels read them here at
call time (``tuning.NAME``), so a test or a benchmark may set them on this
module. Unless said otherwise, the measurements were made on the 2-core KVM
guest of docs/performance.md, float32, with OpenBLAS.
"""

# --- threads (rlrp_ref.kernels.threads) --------------------------------------------

#: Passes of less work than this (element operations: elements times the
#: operations on each) run on the calling thread alone. Handing a band to
#: another thread and waiting for it costs about 60 us (waking an idle virtual
#: CPU), as much as one multiplication of 2M float32 values: below that, a
#: second thread only slows a pass down.
PARALLEL_MIN_WORK = 1 << 20

# --- per-sample sums (rlrp_ref.kernels.reductions) ---------------------------------

#: :func:`~rlrp_ref.kernels.per_sample_sum` adds float32 values in blocks of this
#: many elements: within a block pairwise in float32 (error at most about
#: ``log2(SUM_BLOCK) * 6e-8`` of the block's L1 norm), across blocks in float64.
#: 4x and 16x larger blocks made no measurable difference (docs/performance.md,
#: "What did not pay").
SUM_BLOCK = 1 << 15

# --- convolution (rlrp_ref.kernels.convolution) ------------------------------------

#: The gather route of a stride-1 convolution's vjp copies the flipped kernel
#: (``kh * kw * Cin * Cout`` values) on every call; it is taken when the
#: gradient has at least this many pixels (``N * Ho * Wo``) per output channel,
#: i.e. when that copy is small next to the GEMM. VGG16 at 224x224, batch 1: the
#: 224, 112 and 56 maps take it (where ``Cout <= Cin``), 28 and 14 scatter.
#: Introduced with the gather route (git log: "one GEMM per convolution
#: again ... vjp by a gather ... or a scatter"; ResNet50's stem vjp 15 -> 9 ms).
GATHER_MIN_PIXELS_PER_FILTER = 4
#: :func:`~rlrp_ref.kernels.col2im` accumulates channels-first below this many
#: channels (an RGB image: the innermost axis is then a whole row of the map,
#: not 3 channels); same commit as above (the ResNet50 stem's vjp 15 -> 9 ms).
COL2IM_CHANNELS_FIRST_BELOW = 8

# --- Winograd F(2x2, 3x3) (rlrp_ref.kernels.winograd) ------------------------------

#: ``"auto"`` takes Winograd when both channel counts are at least this (an RGB
#: input's 3 channels make 16 tiny GEMMs, slower than one im2col GEMM) ...
WINOGRAD_MIN_CHANNELS = 16
#: ... and at most this share of the tiled output is padding (a 7x7 map is
#: tiled as 8x8: 31% wasted work) ...
WINOGRAD_MAX_WASTE = 0.15
#: ... and each of its 16 GEMMs ``(tiles, C) @ (C, K)`` has at least this many
#: multiply-adds (``tiles * C * K``): smaller ones run far below the BLAS peak,
#: and the transforms cost more than the multiplications saved. Measured at
#: batch 1 on 2 cores (OpenBLAS): VGG16's 224x224 to 28x28 layers gain 20-40%;
#: ResNet50's 56x56x64, 28x28x128 and 14x14x256 layers and VGG16's 14x14x512 do
#: not, and whole ResNet50 explanations ran 10% faster with im2col there
#: (in-process A/B, VGG16 unchanged).
WINOGRAD_MIN_GEMM = 1 << 24
#: The Winograd transforms run a few tile rows at a time, so that the
#: intermediate of their two passes (rows, then columns) holds about this many
#: bytes and is read back from cache rather than memory (0: whole bands).
#: Cache-sized chunks gained 2-3% over whole bands (docs/performance.md).
WINOGRAD_CHUNK_BYTES = 1 << 21
#: :func:`~rlrp_ref.kernels.winograd_conv` takes the fused route when its
#: transformed tiles (``16 * tiles * max(C, K)`` values) would hold at least
#: this many bytes (more than the caches), its GEMMs have at most
#: :data:`WINOGRAD_FUSED_MAX_CHANNELS` channels on either side, and
#: threadpoolctl is installed (the ``fast`` extra) to hold BLAS to one thread
#: per band (0: never). Such layers move more memory than they multiply (a GEMM
#: ``(tiles, C) @ (C, K)`` does about ``C K / (2 (C + K))`` flops per byte, 16-32
#: at 64-128 channels). Measured on 2 cores, in-process A/B runs: whole VGG16
#: explanations ran about 8% faster at batch 1 (the 224x224x64 layer) and
#: 15-20% faster at batch 8 ...
WINOGRAD_FUSED_MIN_BYTES = 32 << 20
#: ... while taking the 256- and 512-channel layers too made batch 8 slower
#: again (their GEMMs are dense enough for BLAS on every core).
WINOGRAD_FUSED_MAX_CHANNELS = 128

# --- pooling (rlrp_ref.kernels.pooling) --------------------------------------------

#: Max pooling's vjp works on this many bytes of input at a time (per thread),
#: so that each chunk's maxima and masks stay in cache: ResNet50's 3x3/2 pool
#: vjp on 112x112x64 went 3.6 -> 2.6 ms at batch 1 and 61 -> 20 ms at batch 8,
#: VGG16's 224x224 2x2/2 pool vjp 8.4 -> 3.9 ms (git log, docs/performance.md).
MAXPOOL_CHUNK_BYTES = 1 << 20
