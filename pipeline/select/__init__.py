"""Stages that drop rows: exact / MinHash / semantic dedup, decontamination, deita's Repr Filter, ISA and
Magpie's filter presets. May import core, engines, score and synth."""
