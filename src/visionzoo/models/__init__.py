"""One paper-shaped file per family; each registers its variants when imported.

Every model here shares one interface:

- `forward_features(x)` -> unpooled features; `forward_head(x, pre_logits=False)`;
  `forward(x) == forward_head(forward_features(x))`
- `reset_classifier(num_classes)`; `num_classes`; `num_features` (width of pooled features)
- `feature_info`: list of `visionzoo.features.FeatureInfo` for `features_only` (hierarchical models)
- constructor `Model(config, *, num_classes, in_chans, **options)` with no data-dependent work,
  so it builds under `with torch.device("meta"):`; weights computed from data (airbench's patch
  whitening) come from a method `init_from_data(images)`, which `train` calls on a run from scratch
  (`visionzoo.training.data_init`)

Each file ends the same way: `VARIANTS: dict[str, Config]` (name -> the family's frozen config),
then one `visionzoo.registry.register_family` call stating the family's paper, year, builder and
recipe style, and what the workflows ask of it (`cam_layer=`: where explain reads a class activation
map; `lora_targets=`: the modules `--adapt lora` adapts; `edge=True`: built for edge devices), with a
`VariantExtras` for each variant that says something else. Adding a family touches its file only.

The registry imports every module here on its first query (`visionzoo.registry._load_families`).
"""
