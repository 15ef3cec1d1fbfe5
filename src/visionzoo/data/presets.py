"""Names of the train-time augmentation presets, importable without PyTorch (the CLI's parser
lists them); `visionzoo.data.transforms.train_transform` builds each one."""

PRESETS = ("none", "crop", "light", "medium", "strong")
