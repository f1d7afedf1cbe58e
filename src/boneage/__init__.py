"""boneage: skeletal age from hand radiographs (RSNA Pediatric Bone Age), trained, evaluated, explained and served.

    import boneage
    result = boneage.assess("hand.png", sex="F", age_months=130)   # see boneage.api
"""

__version__ = "0.1.0"

# The API is imported on first use, so `import boneage` (and the `boneage` command's start) stays light.
_API = {"assess": "boneage.api", "load_model": "boneage.api", "heatmap": "boneage.api", "chart": "boneage.api",
        "Assessment": "boneage.record", "UserError": "boneage.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'boneage' has no attribute {name!r}")
