"""Kinds of recommender parts a saved folder can rebuild: item encoders, user encoders, adaptors.

A part class registers under a kind name (``@register_kind("text")``) and implements

- ``to_config() -> dict``: its settings as JSON (nested parts through `config_of`);
- ``from_config(config, source) -> part`` (classmethod): rebuild it from those settings, reading
  item features, base models and preprocessors from ``source`` (a `PartSource`);
- optionally ``features() -> dict[str, Tensor]`` (data that is not weights: token tables,
  pixels, a fixed table) and ``preprocessors() -> dict[str, Any]`` (objects with
  ``save_pretrained``: tokenizers, image processors, feature extractors).

So `TransRec.save_pretrained` / `from_pretrained` know no part class by name: a new kind is one
registered class, in any file, and its folders round-trip (see ``tests/rec/test_new_item_kind.py``).
Weights are not the part's business: the folder stores the model's state dict and loads it back
after the parts are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor, nn

from adarec.errors import CheckpointError, ConfigError

_KINDS: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def register_kind(name: str) -> Callable[[T], T]:
    """Class decorator: ``cls`` is the part of kind ``name`` (sets ``cls.kind``)."""

    def add(cls: T) -> T:
        if name in _KINDS and _KINDS[name] is not cls:
            raise ConfigError(f"part kind {name!r} is already registered by "
                              f"{_KINDS[name].__qualname__}")
        for method in ("to_config", "from_config"):
            if not callable(getattr(cls, method, None)):
                raise ConfigError(f"{cls.__qualname__} needs {method}() to be a part kind")
        cls.kind = name  # type: ignore[attr-defined]
        _KINDS[name] = cls
        return cls

    return add


def unregister_kind(name: str) -> None:
    _KINDS.pop(name, None)


def kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def kind_of(module: nn.Module) -> str | None:
    """The registered kind of ``module``'s own class (a subclass is not its parent's kind)."""
    name = getattr(type(module), "kind", None)
    return name if isinstance(name, str) and _KINDS.get(name) is type(module) else None


def config_of(module: nn.Module, role: str = "part") -> dict[str, Any]:
    """``{"kind": ..., **module.to_config()}``; an unregistered class is refused by name."""
    name = kind_of(module)
    if name is None:
        raise ConfigError(
            f"the {role} is a {type(module).__name__}, which is not a registered part kind "
            f"(known: {sorted(_KINDS)}): register it with adarec.rec.register_kind to save it, "
            "or save its weights with adarec.save_model_state and rebuild it in code")
    return {"kind": name, **module.to_config()}  # type: ignore[operator]


def is_part(module: nn.Module) -> bool:
    return kind_of(module) is not None


@dataclass
class PartSource:
    """What a part's ``from_config`` reads from a folder: its item features, the base models
    loaded for it, its weights (for parts that need one to be built) and preprocessors, all by
    names relative to the part (the part at ``prefix`` ``"item_encoder."`` asks for
    ``"input_ids"``)."""

    folder: Path
    prefix: str = ""
    tensors: Mapping[str, Tensor] = field(default_factory=dict)
    weights: Mapping[str, Tensor] = field(default_factory=dict)
    models: Mapping[str, nn.Module] = field(default_factory=dict)
    saved_preprocessors: Mapping[str, str] = field(default_factory=dict)

    def _where(self, name: str) -> str:
        return f"{self.folder}: {self.prefix}{name}"

    def feature(self, name: str) -> Tensor:
        try:
            return self.tensors[self.prefix + name]
        except KeyError:
            raise CheckpointError(f"{self._where(name)}: item feature missing from the "
                                  "weights file") from None

    def has_feature(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def weight(self, name: str) -> Tensor | None:
        return self.weights.get(self.prefix + name)

    def model(self, name: str) -> nn.Module:
        try:
            return self.models[self.prefix + name]
        except KeyError:
            raise CheckpointError(f"{self._where(name)}: no base model was loaded for it") from None

    def preprocessor(self, name: str, loader: Any) -> Any:
        """The preprocessor saved as ``name`` (``loader.from_pretrained(dir)``, e.g.
        ``transformers.AutoTokenizer``), or None when the folder holds none."""
        sub = self.saved_preprocessors.get(self.prefix + name)
        if sub is None or not (self.folder / sub).is_dir():
            return None
        return loader.from_pretrained(str(self.folder / sub))

    def child(self, name: str) -> PartSource:
        return PartSource(self.folder, f"{self.prefix}{name}.", self.tensors, self.weights,
                          self.models, self.saved_preprocessors)

    def build(self, config: Mapping[str, Any], name: str) -> nn.Module:
        """Rebuild the nested part ``name`` (e.g. a multimodal encoder's ``"text"``)."""
        return build_part(config, self.child(name))


def build_part(config: Mapping[str, Any], source: PartSource) -> nn.Module:
    """Rebuild a part from ``config_of``'s output."""
    if not isinstance(config, Mapping) or not isinstance(config.get("kind"), str):
        raise CheckpointError(f"{source.folder}: part {source.prefix or 'config'!r} has no kind: "
                              f"{config!r}"[:300])
    kind = str(config["kind"])
    cls = _KINDS.get(kind)
    if cls is None:
        raise CheckpointError(f"{source.folder}: unknown part kind {kind!r} at "
                              f"{source.prefix.rstrip('.') or 'top'} (known: {sorted(_KINDS)}); "
                              "import the module that registers it before loading")
    settings = {k: v for k, v in config.items() if k != "kind"}
    return cls.from_config(settings, source)  # type: ignore[attr-defined]


def parts_in(model: nn.Module) -> dict[str, nn.Module]:
    """Every registered part inside ``model`` by module path (the model itself as ``""``)."""
    return {name: m for name, m in model.named_modules() if is_part(m)}


def _collect(model: nn.Module, method: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, part in parts_in(model).items():
        get = getattr(part, method, None)
        for key, value in (get() if callable(get) else {}).items():
            if value is not None:
                out[f"{name}.{key}" if name else key] = value
    return out


def features_of(model: nn.Module) -> dict[str, Tensor]:
    """The item features of every part inside ``model``, by ``path.name``."""
    return _collect(model, "features")


def preprocessors_of(model: nn.Module) -> dict[str, Any]:
    """The preprocessors of every part inside ``model``, by ``path.name``."""
    return _collect(model, "preprocessors")


__all__ = ["PartSource", "build_part", "config_of", "features_of", "is_part", "kind_of", "kinds",
           "parts_in", "preprocessors_of", "register_kind", "unregister_kind"]
