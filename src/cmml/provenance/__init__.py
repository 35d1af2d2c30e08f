"""Provenance: per-stage sidecars (what produced an artefact) and `cmml audit` (verify the chain)."""
