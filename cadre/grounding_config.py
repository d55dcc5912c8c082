"""The process's grounding (:class:`~actors.grounding.Grounder`) from settings: the documentation
index over the catalog's tool documentation and the deployment's folder (``CADRE_DOCS_DIR``),
the plan library for past plans, and the ``CADRE_GROUNDING_*`` / ``CADRE_CATALOG_*`` limits."""

from __future__ import annotations

from cadre.actors.grounding import Entries, Grounder, GroundingLimits
from cadre.bus.errors import CadreError
from cadre.planner.catalog import Catalog
from cadre.planner.docs_index import DocsIndex, load_folder
from cadre.settings import Settings

__all__ = ["DocsDirError", "grounder_for", "limits_of"]


class DocsDirError(CadreError):
    """``CADRE_DOCS_DIR`` names something that is not a folder."""

    code = "docs_dir_invalid"


def limits_of(settings: Settings) -> GroundingLimits:
    return GroundingLimits(
        examples=settings.grounding_examples,
        example_chars=settings.grounding_chars,
        passages=settings.grounding_passages,
        passage_chars=settings.grounding_chars,
        catalog_threshold=settings.catalog_list_max,
        catalog_tools=settings.catalog_retrieve,
    )


def grounder_for(settings: Settings, catalog: Catalog, library: Entries | None) -> Grounder:
    """The grounding of a process with this catalog and library (the library: the planner's)."""
    passages = []
    if settings.docs_dir is not None:
        if not settings.docs_dir.is_dir():
            raise DocsDirError(
                f"CADRE_DOCS_DIR {str(settings.docs_dir)!r} is not a folder; "
                "give a folder of Markdown (*.md) documents, or leave it unset"
            )
        passages = load_folder(settings.docs_dir)
    return Grounder(DocsIndex(passages, catalog), library, limits_of(settings))
