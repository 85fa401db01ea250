"""What a loss term judges, declared by the term's class (`loss_kind`), never guessed from its name."""

from __future__ import annotations

from enum import StrEnum

from hydra.utils import get_class


class LossKind(StrEnum):
    """The kinds of loss term: computed from (output, target), or from discriminator outputs."""

    RECONSTRUCTION = "reconstruction"  # term(output, target); any class that declares nothing
    ADVERSARIAL = "adversarial"  # term(fake features); also what trains the discriminator
    FEATURE_MATCHING = "feature_matching"  # term(real features, fake features)

    @property
    def needs_discriminator(self) -> bool:
        """Whether the term is computed from a discriminator's outputs."""
        return self is not LossKind.RECONSTRUCTION


def loss_kind(term: object) -> LossKind:
    """The kind a term class (or instance) declares; terms from other packages are reconstruction terms."""
    cls = term if isinstance(term, type) else type(term)
    return LossKind(getattr(cls, "loss_kind", LossKind.RECONSTRUCTION))


def target_kind(target: str) -> LossKind:
    """The kind of the term class a `_target_` names, imported but not built."""
    return loss_kind(get_class(target))
