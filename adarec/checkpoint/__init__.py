"""Adapter-only checkpoints and full model states: safetensors + JSON folders, written atomically.

Why a folder of two files: the tensors go to safetensors (no pickle, so loading a checkpoint can
never run code) and everything a loader must *check* goes to a readable JSON file: the format
version, the adapter specs and where they were injected, a fingerprint of the base model (its
architecture and a digest of each of its weights), the tensor list and a sha256 of the weights.
The two files vouch for each other: the JSON records the safetensors file's sha256, and the
safetensors metadata records a sha256 of the rest of the JSON, so an edited spec field is caught
like a flipped byte. A checkpoint is refused, with the differences listed, rather than
half-loaded: a wrong base model (another architecture or other weights), a corrupted, truncated
or edited file, or missing tensors are errors, not silent partial loads.

Tensor names are full parameter names relative to the model passed (``encoder.layer.0...``), so a
composite model (an item encoder and a sequence model, each with adapter sets) saves and loads
like any other module. Shared tensors are stored once, under their first name.

The package holds one concept per file: `files` (format constants, atomic writes and checked
reads), `reading` (a folder read and verified as a pair), `fingerprints` and `digests` (what
identifies the base model), `set_records` (adapter sets as recorded), `loading` (the steps both
loaders share), `adapter_checkpoints` and `model_state` (the two kinds of checkpoint).
"""

from ..folders import atomic_folder
from .adapter_checkpoints import load_adapters, save_adapters
from .digests import _base_tensors as _base_tensors
from .digests import weights_digest
from .files import ADAPTER_CONFIG as ADAPTER_CONFIG
from .files import ADAPTER_FORMAT as ADAPTER_FORMAT
from .files import ADAPTER_WEIGHTS as ADAPTER_WEIGHTS
from .files import CONFIG_DIGEST as CONFIG_DIGEST
from .files import FORMAT_VERSION
from .files import STATE_CONFIG as STATE_CONFIG
from .files import STATE_FORMAT as STATE_FORMAT
from .files import STATE_WEIGHTS as STATE_WEIGHTS
from .files import PathLike as PathLike
from .files import config_digest as config_digest
from .files import read_json as read_json
from .files import read_weights as read_weights
from .files import write_json as write_json
from .files import write_weights as write_weights
from .fingerprints import CONFIG_EXEMPT as CONFIG_EXEMPT
from .fingerprints import _compare_fingerprint as _compare_fingerprint
from .fingerprints import compare_fingerprint
from .fingerprints import fingerprint as fingerprint
from .model_state import load_model_state, save_model_state
from .reading import checkpoint_info
from .records import LoadResult
from .set_records import follow_training_mode as follow_training_mode

__all__ = [
    "FORMAT_VERSION",
    "LoadResult",
    "atomic_folder",
    "checkpoint_info",
    "compare_fingerprint",
    "load_adapters",
    "load_model_state",
    "save_adapters",
    "save_model_state",
    "weights_digest",
]
