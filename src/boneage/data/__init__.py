"""Data: label tables, image decoding and preprocessing, splits, the decode-once store and the compact pack."""
