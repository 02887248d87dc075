"""Mask2Former: queries predict a class and a mask; Hungarian matching; no NMS."""
