"""The clinical service: `boneage serve` (FastAPI), its JSON API and its web page."""
