"""Co-Deformable-DETR: Deformable DETR with Co-DETR's collaborative hybrid assignments (training only).

``model.py`` (the detector, builder and registry names), ``neck.py`` (encoder memory -> maps,
anchors), ``atss.py`` (one-stage head), ``rcnn.py`` (Faster R-CNN head), ``queries.py`` (the
customized positive queries). See docs/models.md.
"""

from detrkit.models.co_detr.model import CoDeformableDETR, CoHeads, build_co_deformable_detr

__all__ = ["CoDeformableDETR", "CoHeads", "build_co_deformable_detr"]
