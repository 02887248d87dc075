"""Data: COCO reading and checks, images, datasets, augmentation."""
