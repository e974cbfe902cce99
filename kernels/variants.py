"""The settings under which ``megastride bench attention`` can time our kernels beside the default (its
``--peers``): each a name and the ``MEGASTRIDE_BLOCKSPARSE_*`` switches it sets (docs/kernels.md). No imports,
so the command line's help can list them without loading torch."""

# backward modes of our kernels the bench can time beside the default (blocksparse.dq_mode, dkdv_split), and
# other switches of the forward and the Gluon kernels
OUR_VARIANTS = {
    "separate": {"MEGASTRIDE_BLOCKSPARSE_DQ": "separate"},
    "atomic": {"MEGASTRIDE_BLOCKSPARSE_DQ": "atomic"},
    "split": {"MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "8"},  # dK/dV columns in segments of 8 query blocks everywhere
    "nosplit": {"MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "0"},  # whole columns everywhere (dkdv_split's "auto" off)
    "atomic_split": {"MEGASTRIDE_BLOCKSPARSE_DQ": "atomic", "MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "8"},
    "merged": {"MEGASTRIDE_BLOCKSPARSE_DQ": "merged"},
    # dQ on a second stream beside dK/dV, the delta kernel first (blocksparse.streams_here); and the same launches
    # on one stream, to tell the overlap from the delta kernel's cost
    "streams": {"MEGASTRIDE_BLOCKSPARSE_DQ": "streams"},
    "deltakernel": {"MEGASTRIDE_BLOCKSPARSE_DQ": "separate", "MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ": "0"},
    # the Triton kernels as programmatic dependent launches (blocksparse.use_pdl), alone and with dQ beside dK/dV
    "pdl": {"MEGASTRIDE_BLOCKSPARSE_PDL": "1"},
    "pdlstreams": {"MEGASTRIDE_BLOCKSPARSE_PDL": "1", "MEGASTRIDE_BLOCKSPARSE_DQ": "streams"},
    # the forward's rows in segments of 2 or 4 full entries, merged by each row's last (blocksparse.fwd_split)
    "fwdsplit2": {"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT": "2"},
    "fwdsplit4": {"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT": "4"},
    # dK/dV columns in segments of 4 query blocks everywhere ("split": 8, dkdv_split's "auto" length at 3,072 tokens)
    "split4": {"MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "4"},
    # the separate dQ kernel's rows in segments of 2 too (blocksparse.dq_split), on its own stream beside dK/dV
    "dqsplit2": {"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT": "2", "MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT": "2",
                 "MEGASTRIDE_BLOCKSPARSE_DQ": "streams"},
    # the short-length levers together: rows of 2 full entries, columns of 4 query blocks, dependent launches
    "shortlevers": {"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT": "2", "MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "4",
                    "MEGASTRIDE_BLOCKSPARSE_PDL": "1"},
    # and with the dQ rows in segments of 2 beside dK/dV on a second stream
    "shortstreams": {"MEGASTRIDE_BLOCKSPARSE_FWD_SPLIT": "2", "MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "4",
                     "MEGASTRIDE_BLOCKSPARSE_PDL": "1", "MEGASTRIDE_BLOCKSPARSE_DQ_SPLIT": "2",
                     "MEGASTRIDE_BLOCKSPARSE_DQ": "streams"},
    "runs": {"MEGASTRIDE_BLOCKSPARSE_RUNS": "1"},  # full block lists walked as arithmetic runs (use_runs)
    "lpt": {"MEGASTRIDE_BLOCKSPARSE_ORDER": "lpt"},  # blocks taken longest first (block_order)
    # a two-launch head's first part adds into fp32 sums beside the outputs (the default writes into the outputs)
    "fp32sums": {"MEGASTRIDE_BLOCKSPARSE_PARTIALS": "fp32"},
    "pointer": {"MEGASTRIDE_BLOCKSPARSE_TMA": "0"},  # full lists' tiles from pointer loads, not TMA boxes (use_tma_loads)
    # split columns finished in the kernel by their last segment (split_finish, the default) in segments of 8
    # everywhere; and the earlier path: the "cast" finish (fp32 dK/dV fills and casts) with a delta kernel
    # (delta_in_dq off). splitlast, dqdelta and lean (the thirteenth bench run) became the defaults.
    "split8last": {"MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH": "last", "MEGASTRIDE_BLOCKSPARSE_DKDV_SPLIT": "8"},
    "cast": {"MEGASTRIDE_BLOCKSPARSE_DELTA_IN_DQ": "0", "MEGASTRIDE_BLOCKSPARSE_SPLIT_FINISH": "cast"},
    # every launch through Triton's JITFunction.run, as before direct launches became the default
    # (use_direct_launch): the host's issue time
    "nodirect": {"MEGASTRIDE_BLOCKSPARSE_DIRECT": "0"},
    # every call through the full path that decides its launches, as before launch plans (blocksparse.use_plans)
    "noplans": {"MEGASTRIDE_BLOCKSPARSE_PLANS": "0"},
    # the backward of natural-order parts: Triton's kernels everywhere, or Gluon's at every head dim it has
    # (blocksparse.gluon_backward; its "auto" default: head dim 128), its dK/dV in one or two launches
    "triton": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "0"},
    "gluon": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "1"},
    # no dQ kernel: the Gluon dK/dV kernel adds each step's dQ into fp32 or fp16 sums by a TMA reduce
    # (blocksparse.gluon_dq_sums; head dim 64, 128-blocks; "auto": fp16 from 262,144 tokens)
    "dqoff": {"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ": "0"},  # the dQ kernel at every length
    "dqfp32": {"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ": "fp32"},
    "dqfp16": {"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ": "fp16"},
    # the fused dK/dV step loads the next step's list entry, lse and delta at its end (gluon_bwd.look_ahead):
    # everywhere, or nowhere ("auto": whole columns into fp16 sums without earlier parts' sums)
    "ahead": {"MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD": "1"},
    "noahead": {"MEGASTRIDE_BLOCKSPARSE_GLUON_AHEAD": "0"},
    # the fused dK/dV kernel over whole columns without warp specialisation (gluon_bwd.warp_specialized; the
    # default where it can run: one column a program, its keys split between two consumer warpgroups, with a
    # loader and dQ sender warps), or warp-specialised with two columns a program, one a consumer
    "nows": {"MEGASTRIDE_BLOCKSPARSE_GLUON_WS": "0"},
    "columns": {"MEGASTRIDE_BLOCKSPARSE_GLUON_WS": "columns"},
    # the fused dQ (fp16 sums) on the halves kernel at every length and head dim it has (the default from 65,536
    # tokens at head dims 64 and 128, docs/benchmarks.md "Forty-first run")
    "halves": {"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ": "fp16", "MEGASTRIDE_BLOCKSPARSE_GLUON_WS": "halves"},
    # and on whole columns everywhere (where gluon_split's "auto" cuts the summary columns into segments: 262,144
    # tokens at 2x128)
    "halveswhole": {"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ": "fp16", "MEGASTRIDE_BLOCKSPARSE_GLUON_WS": "halves",
                    "MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT": "0"},
    # and on column segments where gluon_split cuts them (gluon_bwd.halves_split; the default at head dim 128 only)
    "halvessplit": {"MEGASTRIDE_BLOCKSPARSE_GLUON_DQ": "fp16", "MEGASTRIDE_BLOCKSPARSE_GLUON_WS": "halves",
                    "MEGASTRIDE_BLOCKSPARSE_GLUON_HALVES_SPLIT": "1"},
    # the forward as one loop over each program's flattened tiles (blocksparse.flat_setting, kernels/flat.py):
    # wherever its lists fit, or where it timed faster than the default forward (per part and shape)
    "flat": {"MEGASTRIDE_BLOCKSPARSE_FLAT": "1"},
    "flatauto": {"MEGASTRIDE_BLOCKSPARSE_FLAT": "auto"},
    # and the separate dQ kernel as flattened tiles too (blocksparse.use_flat_dq), the dQ mode separate
    "flatdq": {"MEGASTRIDE_BLOCKSPARSE_FLAT": "1", "MEGASTRIDE_BLOCKSPARSE_FLAT_DQ": "1", "MEGASTRIDE_BLOCKSPARSE_DQ": "separate"},
    # and dK/dV as flattened key tiles too (blocksparse.use_flat_dkdv; long columns cut into pieces of a fair
    # share, flat.segment_setting), or with key tiles never cut
    "flatbwd": {"MEGASTRIDE_BLOCKSPARSE_FLAT": "1", "MEGASTRIDE_BLOCKSPARSE_FLAT_DQ": "1",
                "MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV": "1", "MEGASTRIDE_BLOCKSPARSE_DQ": "separate"},
    "flatwhole": {"MEGASTRIDE_BLOCKSPARSE_FLAT": "1", "MEGASTRIDE_BLOCKSPARSE_FLAT_DQ": "1",
                  "MEGASTRIDE_BLOCKSPARSE_FLAT_DKDV": "1", "MEGASTRIDE_BLOCKSPARSE_DQ": "separate",
                  "MEGASTRIDE_BLOCKSPARSE_FLAT_SEGMENT": "0"},
    "gluon1": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "1", "MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES": "1"},
    "gluon2": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "1", "MEGASTRIDE_BLOCKSPARSE_GLUON_DKDV_LAUNCHES": "2"},
    "onestream": {"MEGASTRIDE_BLOCKSPARSE_GLUON_STREAMS": "0"},  # Gluon's dQ after its dK/dV on one stream
    "gluonwhole": {"MEGASTRIDE_BLOCKSPARSE_GLUON_SPLIT": "0"},  # Gluon's dK/dV programs take whole columns
    # Gluon's programs on two warpgroups (eight warps) of 128 rows sharing the tiles they stream: for head dim 64
    "gluon8w": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "1", "MEGASTRIDE_BLOCKSPARSE_GLUON_TILES": "dkdv:128x64s3w8,dq:128x64s3w8"},
    # more programs an SM under a register cap (gluon_bwd.registers): three dK/dV programs of 64 keys, 32 queries a
    # step, and three dQ programs of 64 x 64 (occ3) or four of 64 queries, 32 keys a step (occ4)
    "gluonocc3": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "1",
                  "MEGASTRIDE_BLOCKSPARSE_GLUON_TILES": "dkdv:64x32s4w4r168,dq:64x64s3w4r168"},
    # the forward of natural-order parts in Gluon (blocksparse.gluon_forward; off by default), with the default
    # backward, or in one launch a part (gluon_fwd.launches)
    "gluonfwd": {"MEGASTRIDE_BLOCKSPARSE_GLUON_FWD": "1"},
    "gluonfwd1": {"MEGASTRIDE_BLOCKSPARSE_GLUON_FWD": "1", "MEGASTRIDE_BLOCKSPARSE_GLUON_FWD_LAUNCHES": "1"},
    "gluonocc4": {"MEGASTRIDE_BLOCKSPARSE_GLUON": "1",
                  "MEGASTRIDE_BLOCKSPARSE_GLUON_TILES": "dkdv:64x32s4w4r168,dq:64x32s4w4r128"},
}


PREFIX = "MEGASTRIDE_BLOCKSPARSE_"


def describe() -> str:
    """Each setting as NAME (SWITCH=VALUE ...), the switches' common prefix left off: for ``--help``."""
    items = []
    for name, env in OUR_VARIANTS.items():
        switches = " ".join(f"{key.removeprefix(PREFIX)}={value}" for key, value in env.items())
        items.append(f"{name} ({switches})")
    return ", ".join(items)
