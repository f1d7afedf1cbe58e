"""boneage: skeletal age from hand radiographs (RSNA Pediatric Bone Age), trained, evaluated, explained and served."""

__version__ = "0.1.0"
