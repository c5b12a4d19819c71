"""Converters from public nucleus datasets, in their published formats, to the reference layout
that the pipeline reads (`cellseg.data.dataset`); see docs/datasets.md.

Each `convert_<name>` lists and checks the native files at once and returns a `Conversion`
whose items are read one at a time; `write_reference` writes them, all or nothing. The command
line: `python -m cellseg.data.converters <name> SRC DEST [options]`. `reference_to_geojson` rewrites
a reference-layout folder as images + QuPath GeoJSON (the geojson source).
"""

from cellseg.data.converters.consep import convert_consep
from cellseg.data.converters.geojson import reference_to_geojson
from cellseg.data.converters.layout import Conversion, Item, Summary, write_reference
from cellseg.data.converters.lizard import convert_lizard
from cellseg.data.converters.monuseg import convert_monusac, convert_monuseg
from cellseg.data.converters.pannuke import convert_pannuke

__all__ = [
    "Conversion",
    "Item",
    "Summary",
    "convert_consep",
    "convert_lizard",
    "convert_monusac",
    "convert_monuseg",
    "convert_pannuke",
    "reference_to_geojson",
    "write_reference",
]
