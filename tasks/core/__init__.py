"""Pure maths: boxes, COCO matching and AP, the bootstrap, hashing. Imports nothing else of ``tasks``."""
