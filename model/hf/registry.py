"""Which Hugging Face family a Loom config exports to, and which family reads a config.json.

The registry knows no family by name: it imports every module of a package (model/hf/families/ for the one the
conversion uses) and registers each module's `FAMILY`, so a new family is one new file there. `family_for(cfg)`
picks the family whose architecture is the config's: the one asked for, else the one the config was imported from
while it still fits, else the first by priority whose `matches` holds (model/hf/family.py). Whatever the chosen
class cannot compute identically is refused with the family's reasons, so export never approximates.
"""

from __future__ import annotations

import importlib
import pkgutil

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.family import Family

FAMILIES_PACKAGE = "model.hf.families"


class FamilyRegistry:
    """Families by `model_type`, filled from the modules of `package` on first use and by `register` (package
    None: by `register` only)."""

    def __init__(self, package: str | None = FAMILIES_PACKAGE):
        self.package = package
        self._families: dict[str, Family] = {}
        self._discovered = package is None

    def register(self, fam: Family) -> Family:
        """Add one family; its model_type and its priority must be new (a shared priority would let the order in
        which modules were found decide between two families)."""
        if fam.model_type in self._families:
            raise ValueError(f"two families declare model_type={fam.model_type!r}; each needs its own")
        clash = [f.model_type for f in self._families.values() if f.priority == fam.priority]
        if clash:
            raise ValueError(
                f"family {fam.model_type!r} has priority {fam.priority}, as {clash[0]!r} does; "
                f"give it a priority no other family has"
            )
        self._families[fam.model_type] = fam
        return fam

    def families(self) -> dict[str, Family]:
        """model_type -> Family, every family the package holds included."""
        self._discover()
        return dict(self._families)

    def family(self, model_type: str | None) -> Family:
        """The family of a config.json's `model_type`, or HFConversionError naming the supported ones."""
        families = self.families()
        if model_type not in families:
            raise HFConversionError(
                f"model_type={model_type!r} is not supported (supported: {', '.join(sorted(families))})"
            )
        return families[model_type]

    def guess(self, cfg: ModelConfig) -> Family:
        """The family a config's features point to: the highest-priority one whose `matches` holds (checked
        afterwards by that family's `problems`)."""
        for fam in sorted(self.families().values(), key=lambda f: f.priority, reverse=True):
            if fam.matches(cfg):
                return fam
        raise HFConversionError(
            f"model config {cfg.name!r}: no Hugging Face family recognises it "
            f"(registered: {', '.join(sorted(self._families))})"
        )

    def family_for(self, cfg: ModelConfig, model_type: str | None = None) -> Family:
        """The family `cfg` exports to: `model_type` if given, else the one it was imported from when it still
        fits, else the one its features point to. HFConversionError lists why it does not fit."""
        families = self.families()
        imported = families.get(cfg.hf_model_type) if cfg.hf_model_type is not None else None
        if model_type is None and imported is not None and not imported.problems(cfg):
            chosen = imported
        elif model_type:
            chosen = self.family(model_type)
        else:
            chosen = self.guess(cfg)
        problems = chosen.problems(cfg)
        if problems:
            raise HFConversionError(
                f"model config {cfg.name!r} cannot be exported to Hugging Face as {chosen.model_type} "
                f"({chosen.architecture}): " + "; ".join(problems)
            )
        return chosen

    def _discover(self) -> None:
        if self._discovered:
            return
        package = importlib.import_module(self.package)
        found = []  # every module imported before any is registered: a failed import leaves nothing half-done
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{self.package}.{info.name}")
            fam = getattr(module, "FAMILY", None)
            if not isinstance(fam, Family):
                raise TypeError(
                    f"{module.__file__}: a module of {self.package} must define FAMILY = Family(...) "
                    f"(model/hf/family.py); it has {type(fam).__name__}"
                )
            found.append(fam)
        for fam in found:
            self.register(fam)
        self._discovered = True


REGISTRY = FamilyRegistry()


def family(model_type: str | None) -> Family:
    """`REGISTRY.family`: the family of a config.json's model_type."""
    return REGISTRY.family(model_type)


def family_for(cfg: ModelConfig, model_type: str | None = None) -> Family:
    """`REGISTRY.family_for`: the family `cfg` exports to."""
    return REGISTRY.family_for(cfg, model_type)
