"""megastride.data_shards: the zarr v3 shard format, its writers and the streaming reader.

No torch.distributed and nothing from engine/ or kernels/ here: rank information comes in as
arguments (or from the environment, see ``partition.world_from_env``).
"""

from .format import FORMAT_VERSION, Store, StoreError, open_store
from .mulaw import mulaw_decode, mulaw_encode
from .partition import World, batch_positions, world_from_env
from .reader import ShardLoader, build_loader, eval_windows
from .write_audio import write_audio_store
from .write_images import write_image_store
from .write_text import write_bytes_store
from .writing import STDLIB_SOURCE, PrepareError

__all__ = [
    "FORMAT_VERSION", "STDLIB_SOURCE", "PrepareError", "ShardLoader", "Store", "StoreError", "World",
    "batch_positions", "build_loader", "eval_windows", "mulaw_decode", "mulaw_encode", "open_store",
    "world_from_env", "write_audio_store", "write_bytes_store", "write_image_store",
]
