"""FCOS, the anchor-free dense detector, and the two families that add masks to it: CondInst and YOLACT."""
