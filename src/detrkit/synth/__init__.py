"""Synthetic training data for rare classes (``detrkit synth``, ``detrkit ablate``).

- :mod:`~detrkit.synth.rare`: which classes are rare (the ``detrkit data stats`` definition);
- :mod:`~detrkit.synth.copy_paste`: pixel-exact copy-paste with occlusion updates;
  :mod:`~detrkit.synth.bank`: instances cut from training images; :mod:`~detrkit.synth.masks`:
  COCO masks stored inside their boxes;
- :mod:`~detrkit.synth.augment`: heavy, box-correct augmentation on ``torchvision.transforms.v2``;
- :mod:`~detrkit.synth.diffusion`: Stable Diffusion inpainting (the ``[diffusion]`` extra);
- :mod:`~detrkit.synth.generate` + :mod:`~detrkit.synth.writer`: offline datasets (images, COCO,
  metadata, sample grid);
- :mod:`~detrkit.synth.online`: copy-paste as a training-time transform (``data.copy_paste``).

The package imports only ``detrkit.data`` (and leaf modules), so the engine may use it; the
ablation driver, which trains runs, is :mod:`detrkit.workflows.ablate`.

See ``docs/synth.md``.
"""
